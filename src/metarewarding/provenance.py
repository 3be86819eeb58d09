"""Provenance: what every stage output was made from, and a check that it still is.

Every job runs inside ``recorded(job)``: on success it writes a manifest beside its outputs
(``logs/iter{t}/{name}.log`` -> ``results/iter{t}/manifests/{name}.json``) holding the SHA-256
of every input and output (files, and folders such as models), the exact parameters and
wildcards, package versions, the project's git commit and dirty flag, host, device and wall
time. ``write_run_manifest`` ties the stage manifests of a run into ``results/MANIFEST.json``;
``python -m metarewarding.provenance verify results/MANIFEST.json`` re-hashes every recorded
output and reports any that changed.

``job`` is the ``snakemake`` object of a script job, used only through its attributes (rule,
input, output, params, wildcards, log, threads); this module does not import Snakemake.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .logs import log_to
from .records import read_json, write_json

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "vllm", "snakemake",
            "jsonlines", "numpy")
REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def digest(path: str | Path) -> str | None:
    """SHA-256 of a file, or of a folder's sorted (relative path, file digest) list; the
    marker Snakemake drops into finished output folders is not part of the content."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        sha = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file() and p.name != SNAKEMAKE_MARKER):
            sha.update(f"{item.relative_to(path).as_posix()}\0{file_digest(item)}\n".encode())
        return sha.hexdigest()
    return None


def _paths(value) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def hashes(named) -> dict[str, dict[str, str | None]]:
    """{name: {path: digest}} for a Snakemake named list (or any mapping of name -> paths)."""
    items = named.items() if hasattr(named, "items") else named
    return {name: {p: digest(p) for p in _paths(value)} for name, value in items}


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape the results (None: not installed)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: Path = REPO) -> dict:
    """The checkout's commit and whether tracked files differ from it."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def device() -> dict:
    """Where the job ran: host, and the GPU when torch was used and saw one."""
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    return {"host": platform.node(), "platform": platform.platform(), "gpu": gpu}


def manifest_path(log_path: str) -> Path:
    """``logs/<where>/<name>.log`` -> ``results/<where>/manifests/<name>.json``."""
    log = Path(log_path)
    parts = log.parts
    where = Path(*parts[1:-1]) if parts[0] == "logs" else log.parent
    return Path("results") / where / "manifests" / (log.stem + ".json")


@contextmanager
def recorded(job) -> Iterator[None]:
    """Run a job's work with its log attached, then write its manifest (only on success)."""
    log_to(job.log[0])
    started, wall = time.time(), time.perf_counter()
    yield
    params = {k: v for k, v in job.params.items()}
    manifest = {
        "rule": job.rule,
        "wildcards": dict(job.wildcards.items()),
        "params": json.loads(json.dumps(params, default=str)),
        "inputs": hashes(job.input),
        "outputs": hashes(job.output),
        "threads": job.threads,
        "versions": versions(),
        "git": git_state(),
        "device": device(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_seconds": round(time.perf_counter() - wall, 3),
    }
    write_json(manifest_path(job.log[0]), manifest)


def current_manifests(results_dir: str) -> dict[str, dict]:
    """The stage manifests under ``results_dir`` whose recorded outputs all still exist (a
    manifest left by an output that a later config no longer makes is not part of the run)."""
    found = {}
    for path in sorted(Path(results_dir).glob("**/manifests/*.json")):
        manifest = read_json(path)
        outputs = [p for paths in manifest["outputs"].values() for p in paths]
        if all(Path(p).exists() for p in outputs):
            found[str(path)] = manifest
    return found


def write_run_manifest(results_dir: str, config: dict, out_path: str) -> dict:
    """Tie a run's stage manifests together with its config, code state and environment."""
    stages = current_manifests(results_dir)
    run = {
        "config": config,
        "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
        "git": git_state(),
        "versions": versions(),
        "device": device(),
        "stages": stages,
    }
    write_json(out_path, run)
    return run


def verify(run_manifest: str) -> list[str]:
    """Re-hash every output a run manifest records; return one line per mismatch."""
    problems = []
    for name, stage in read_json(run_manifest)["stages"].items():
        for paths in stage["outputs"].values():
            for path, recorded_digest in paths.items():
                now = digest(path)
                if now != recorded_digest:
                    state = "missing" if now is None else f"sha256 {now[:12]}… != recorded {str(recorded_digest)[:12]}…"
                    problems.append(f"{path}: {state} (from {name})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metarewarding.provenance")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="re-hash the outputs recorded in a run manifest")
    check.add_argument("manifest", nargs="?", default="results/MANIFEST.json")
    args = parser.parse_args(argv)
    problems = verify(args.manifest)
    for line in problems:
        print(line)
    stages = len(read_json(args.manifest)["stages"])
    print(f"{stages} stage manifests checked: {'OK' if not problems else f'{len(problems)} mismatches'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
