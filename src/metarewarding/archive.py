"""Pack a finished run into one tarball that says how to rerun it."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Sequence

import yaml

from .records import atomic_path

README = """\
Meta-Rewarding run archive ({created})

config.yaml           the experiment config this run used (validated, defaults filled in)
results/MANIFEST.json hashes of every stage's inputs and outputs, parameters, versions, git commit
results/iter*/        prompts, responses, judgments, meta-judgments, pairs, stats, evaluation
                      {models}

To rerun: check out the commit named in results/MANIFEST.json ("git": {{"commit": ...}}),
install as the project's README says, then

    snakemake --configfile config.yaml

and compare: python -m metarewarding.provenance verify results/MANIFEST.json
"""


def archive_members(results: Path, include_models: bool) -> list[Path]:
    """Every file under ``results`` worth keeping: records, stats, manifests, eval, plots;
    model weights only when asked (they are large and can be retrained). Hidden files and the
    ``.partial`` checkpoints of unfinished model stages are not results."""
    files = sorted(p for p in results.rglob("*")
                   if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".partial"))
    if include_models:
        return files
    return [p for p in files if p.relative_to(results).parts[1:2] != ("model",)]


def pack_run(config: dict, results_dir: str, extra: Sequence[str], include_models: bool, out_path: str) -> int:
    """Write ``out_path`` (.tar.gz) with the config, ``results_dir`` and ``extra`` files
    (e.g. a report); return how many result files went in."""
    results = Path(results_dir)
    members = [p for p in archive_members(results, include_models) if p.resolve() != Path(out_path).resolve()]
    readme = README.format(created=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           models="model/ folders included" if include_models else
                           "models left out (set archive.models: true to include them)")
    with atomic_path(out_path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        _add_text(tar, "README.txt", readme)
        _add_text(tar, "config.yaml", yaml.safe_dump(config, sort_keys=False))
        for path in members + [Path(p) for p in extra if Path(p).exists()]:
            tar.add(path, arcname=str(path))
    return len(members)


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))
