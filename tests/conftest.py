"""Shared fixtures: the repository, a tiny random model built once, and a Snakemake runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a locally trained BPE tokenizer and a chat template."""
    from metarewarding.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model):
    """The default-shaped two-iteration workflow, run once on the tiny model; tests read it
    and dry-run changes against it (none of them may change its files)."""
    workdir = tmp_path_factory.mktemp("tiny-run")
    write_config(workdir / "config.yaml", tiny_config(tiny_model))
    result = snakemake(workdir, "--configfile", str(workdir / "config.yaml"))
    return workdir, result


def tiny_config(model: Path, **overrides) -> dict:
    """A two-iteration experiment on the tiny model with the repository's data, in seconds."""
    config = {
        "seed": 7,
        "seed_model": {"source": str(model)},
        "prompt_pool": str(REPO / "data/prompts/pool.jsonl"),
        "exclude_prompts": [str(REPO / "data/prompts/eval.jsonl")],
        "templates": {
            "judge": str(REPO / "data/templates/judge.txt"),
            "meta_judge": str(REPO / "data/templates/meta_judge.txt"),
        },
        "backend": {"batch_size": 16},
        "iteration_defaults": {
            "prompts": 4,
            "generation": {"samples": 3, "max_new_tokens": 12},
            "judge": {"judgments": 3, "max_new_tokens": 8},
            "meta_judge": {"max_new_tokens": 6},
            "dpo": {"batch_size": 2, "max_length": 512},
        },
        "iterations": [{}, {"pairs": {"rho": 0.32}, "meta_judge": {"enabled": False}}],
        "evaluation": {
            "sets": {"heldout": {"source": str(REPO / "data/prompts/eval.jsonl"), "limit": 3}},
            "generation": {"max_new_tokens": 8},
            "evaluator": {"template": str(REPO / "data/templates/pairwise.txt"), "verdict_mode": "forced",
                          "max_new_tokens": 4, "preference": "weighted"},
            "human_preferences": {"path": str(REPO / "data/eval/human_preferences.jsonl"), "limit": 4,
                                  "judge_overrides": {"judgments": 1}},
            "bootstrap": {"samples": 200},
        },
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` (its own results/, logs/, .snakemake/)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--cores", "2", "--profile", str(REPO / "profiles/default"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def jobs_run(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table Snakemake prints."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            in_table, counts = True, {}
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                in_table = False
    return counts
