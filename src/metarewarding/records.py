"""JSON Lines records: reading with checks that name the file and line, atomic writing.

Every stage reads and writes its records through these helpers, so a malformed line, a
missing field or a duplicate id stops the stage with a message that says where and what, and
a killed job never leaves a half-written file under its final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import jsonlines


class RecordError(ValueError):
    """A record file does not hold what the stage expects."""


def read_jsonl(
    path: str | Path,
    required: Sequence[str] = (),
    id_field: str | None = None,
    allow_empty: bool = False,
) -> list[dict]:
    """Read a JSON Lines file; check every record has ``required`` fields and unique ids."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    records, seen = [], {}
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            record = _parse_line(path, lineno, line)
            _check_fields(path, lineno, record, required)
            if id_field is not None:
                key = record[id_field]
                if key in seen:
                    raise RecordError(
                        f"{path}:{lineno}: duplicate {id_field} {key!r} (first seen on line {seen[key]})"
                    )
                seen[key] = lineno
            records.append(record)
    if not records and not allow_empty:
        raise RecordError(f"{path}: no records; expected at least one JSON object per line")
    return records


@contextmanager
def _open_text(path: Path) -> Iterator[Iterable[str]]:
    try:
        with open(path, encoding="utf-8") as handle:
            yield handle
    except UnicodeDecodeError as err:
        raise RecordError(f"{path}: not valid UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _check_fields(path: Path, lineno: int, record: dict, required: Sequence[str]) -> None:
    missing = [f for f in required if f not in record]
    if missing:
        raise RecordError(
            f"{path}:{lineno}: missing field(s) {', '.join(missing)}; "
            f"expected {', '.join(required)}"
        )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds.

    The temporary file is flushed to disk before the rename, so a full disk (which some file
    systems report only on close or fsync) fails here, with the file named, and leaves the
    previous ``path`` as it was and no temporary file behind."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if err.errno is None:
            raise
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from err
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """Write records atomically, one compact JSON object per line; return the count."""
    count = 0
    with atomic_path(path) as tmp, jsonlines.open(tmp, mode="w", compact=True, sort_keys=False) as out:
        for record in records:
            out.write(record)
            count += 1
    return count


def write_json(path: str | Path, data: object) -> None:
    """Write a JSON document atomically, indented for people to read."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> object:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None
