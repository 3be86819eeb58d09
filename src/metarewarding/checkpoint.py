"""Checkpoints inside a model stage: a job killed mid-stage resumes where it stopped.

A model stage (generate_responses, judge_responses, meta_judge) hands its prompts to the
backend in chunks and appends every finished chunk's records, as one JSON line, to
``<output>.partial`` beside the stage's output, e.g. ``results/iter1/shards/judgments.0.jsonl.partial``.
The file is not a declared output, so Snakemake leaves it alone when it deletes the outputs of
a failed or killed job. Its first line is a fingerprint of everything the records depend on:
the input records, the rendered prompts, the settings and seed, the backend's description, the
model folder's files (names, sizes, modification times), the package's source code and the
library versions. A job started again reads the finished chunks back, skips their prompts and
runs the rest; a partial with another fingerprint is discarded (with a log line), and a last
line that a kill cut short is dropped. The output is then written atomically and the partial
removed.

The records do not depend on the chunks, on where a job was killed, or on ``checkpoint_every``:

- every prompt is seeded by its index among the stage's prompts, not by its place in a call
  (``indices`` of ``Backend.generate``; forced options likewise, see ``judging.sample_lines``);
- a chunk is a union of whole batches of the batching the backend would use for all the
  stage's prompts at once (``Backend.batches``: the transformers backend sorts prompts by
  length and decodes ``batch_size // n`` of them together), so every batch holds the same
  prompts, padded the same way, as in one uninterrupted call. Backends without ``batches``
  (vLLM, OpenAI-compatible servers) seed each prompt on its own and batch dynamically anyway.

A chunk is therefore at least ``checkpoint_every`` prompts: the smallest run of whole batches
that reaches it. ``checkpoint_every`` None runs the stage in one call with no partial file.

Tests set ``METAREWARDING_CHECKPOINT_PAUSE`` (seconds) to sleep after each checkpoint that
is followed by another chunk, so that a job can be killed between two chunks on a tiny model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

from .records import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1
PAUSE_ENV = "METAREWARDING_CHECKPOINT_PAUSE"
PACKAGE = Path(__file__).resolve().parent
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def partial_path(out_path: str | Path) -> Path:
    """Where the finished chunks of the stage writing ``out_path`` are kept."""
    out = Path(out_path)
    return out.with_name(out.name + ".partial")


def checkpoint_every(config: dict) -> int | None:
    """``inference.checkpoint_every`` of a workflow config, defaults filled in. The workflow
    scripts read it from the config rather than from params, so that changing it (it never
    changes the records) does not rerun a stage."""
    from .config import workflow_config

    return workflow_config(config)["inference"]["checkpoint_every"]


# --------------------------------------------------------------------------- #
# Fingerprints
# --------------------------------------------------------------------------- #
def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def fingerprint(**parts) -> str:
    """SHA-256 of ``parts`` as canonical JSON (dataclasses such as ChatPrompt as dicts); lists
    are hashed item by item, so that a stage's prompts are never one huge string in memory."""
    sha = hashlib.sha256()

    def add(value) -> None:
        sha.update(json.dumps(value, sort_keys=True, ensure_ascii=False, default=_jsonable).encode("utf-8"))
        sha.update(b"\n")

    for name in sorted(parts):
        value = parts[name]
        sha.update(f"{name}\0".encode())
        if isinstance(value, (list, tuple)):
            add(len(value))
            for item in value:
                add(item)
        else:
            add(value)
    return sha.hexdigest()


def model_identity(model_dir: str | Path) -> list:
    """Relative path, size and modification time of every file of a model folder: a cheap
    stand-in for its digest (a retrained or replaced model has new files). Hashing the weights
    of a large model at every job start would cost minutes."""
    root = Path(model_dir)
    if not root.is_dir():
        return [str(model_dir)]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != SNAKEMAKE_MARKER)
    return [[p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def code_identity() -> str:
    """SHA-256 of the package's source files: a partial made by other code is not reused."""
    sha = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        sha.update(f"{path.relative_to(PACKAGE).as_posix()}\0".encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def stage_fingerprint(stage: str, model_dir: str, backend, **parts) -> str:
    """The fingerprint of one model stage's run: ``parts`` (inputs, prompts, settings, seed)
    plus the backend, the model's files, the package code and the library versions."""
    from .provenance import versions

    return fingerprint(stage=stage, backend=backend.describe(), model=model_identity(model_dir),
                       code=code_identity(), versions=versions(), **parts)


# --------------------------------------------------------------------------- #
# Chunks
# --------------------------------------------------------------------------- #
def backend_batches(backend, prompts: Sequence, n: int) -> list[list[int]]:
    """The backend's batches of ``prompts`` (positions, in decoding order); one prompt per
    group for backends whose results do not depend on which prompts share a call."""
    plan = getattr(backend, "batches", None)
    if plan is None:
        return [[i] for i in range(len(prompts))]
    return plan(prompts, n)


def chunk_groups(groups: Sequence[Sequence[int]], every: int) -> list[list[int]]:
    """Consecutive groups joined into chunks of at least ``every`` positions (the last chunk
    may be smaller); a group is never split."""
    chunks, current = [], []
    for group in groups:
        current.extend(group)
        if len(current) >= every:
            chunks.append(current)
            current = []
    if current:
        chunks.append(current)
    return chunks


class StageCheckpoint:
    """The partial file of one stage job: load finished chunks, append new ones, remove it.

    ``work(positions)`` runs the model on the prompts at ``positions`` and returns their
    records, ``per_item`` per prompt, in the order of ``positions``.
    """

    def __init__(self, out_path: str | Path, key: str, every: int | None, unit: str = "prompts") -> None:
        if every is not None and every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 or None, got {every}")
        self.path = partial_path(out_path)
        self.key = key
        self.every = every
        self.unit = unit
        self.resumed = 0
        self.chunks_run = 0

    def run(self, groups: Sequence[Sequence[int]], work: Callable[[list[int]], list[dict]],
            per_item: int) -> list[dict]:
        """Every prompt's records, in position order, from the partial file where it has them."""
        total = sum(len(g) for g in groups)
        if total == 0:
            return []
        if self.every is None:
            records = work(list(range(total)))
            self._check_count(records, total, per_item)
            return records
        done = self._load(groups, per_item)
        self.resumed = len(done)
        if done:
            log.info("resumed from %s: %d of %d %s already completed, %d to go", self.path,
                     len(done), total, self.unit, total - len(done))
        remaining = [list(g) for g in groups if g[0] not in done]
        chunks = chunk_groups(remaining, self.every)
        pause = float(os.environ.get(PAUSE_ENV) or 0)
        for number, chunk in enumerate(chunks, start=1):
            records = work(chunk)
            self._check_count(records, len(chunk), per_item)
            rows = [records[k * per_item:(k + 1) * per_item] for k in range(len(chunk))]
            self._append(chunk, rows)
            done.update(zip(chunk, rows))
            self.chunks_run += 1
            log.info("checkpoint: %d of %d %s done (%s)", len(done), total, self.unit, self.path.name)
            if pause and number < len(chunks):
                time.sleep(pause)
        return [record for position in range(total) for record in done[position]]

    def remove(self) -> None:
        """Delete the partial file (once the stage's outputs are in place)."""
        self.path.unlink(missing_ok=True)

    @staticmethod
    def _check_count(records: list[dict], items: int, per_item: int) -> None:
        if len(records) != items * per_item:
            raise RuntimeError(f"expected {per_item} records for each of {items} prompts, got {len(records)}")

    def _start(self) -> None:
        """A new partial file holding only the header."""
        header = {"format": FORMAT, "fingerprint": self.key}
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def _append(self, positions: list[int], rows: list[list[dict]]) -> None:
        line = json.dumps({"positions": positions, "records": rows}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8") + b"\n"
        with open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _discard(self, why: str) -> dict:
        log.warning("discarding %s: %s; starting the stage from its first prompt", self.path, why)
        self._start()
        return {}

    def _load(self, groups: Sequence[Sequence[int]], per_item: int) -> dict[int, list[dict]]:
        """The finished prompts' records from the partial file (position -> records); start a
        new file when there is none or it belongs to other inputs; cut off a broken tail."""
        if not self.path.exists():
            self._start()
            return {}
        data = self.path.read_bytes()
        lines = data.split(b"\n")  # the last item is b"" after a complete final line
        try:
            header = json.loads(lines[0]) if len(lines) > 1 else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return self._discard("its header is missing or unreadable")
        if header.get("fingerprint") != self.key:
            return self._discard("it was made from other inputs, settings, model or code "
                                 "(fingerprint differs)")
        total = sum(len(g) for g in groups)
        done: dict[int, list[dict]] = {}
        good = len(lines[0]) + 1
        for line in lines[1:-1]:
            try:
                entry = json.loads(line)
                positions, rows = entry["positions"], entry["records"]
                valid = (isinstance(positions, list) and len(positions) == len(rows)
                         and len(set(positions)) == len(positions)
                         and all(isinstance(p, int) and 0 <= p < total and p not in done for p in positions)
                         and all(isinstance(r, list) and len(r) == per_item for r in rows))
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                break
            done.update(zip(positions, rows))
            good += len(line) + 1
        if good < len(data):
            log.warning("dropping %d bytes at the end of %s: a chunk the killed job did not finish "
                        "writing", len(data) - good, self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(good)
                handle.flush()
                os.fsync(handle.fileno())
        if any(0 < sum(p in done for p in g) < len(g) for g in groups):
            return self._discard("its chunks do not match this run's batches")
        return done
