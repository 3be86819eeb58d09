"""Reproducibility, resume after a kill, and incremental reruns on the tiny model.

Each test of a change is one row of the README's rerun table (the rho row is in
test_tiny_run.py): it dry-runs the finished tiny run after the change and checks which jobs
Snakemake would run again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from conftest import REPO, jobs_run, snakemake, tiny_config, write_config

RECORDS = ["prompts.jsonl", "responses.jsonl", "judgments.jsonl", "meta_judgments.jsonl",
           "pairs/actor.jsonl", "pairs/judge.jsonl", "pairs/train.jsonl"]


def dry_run_after(workdir: Path, change) -> dict[str, int]:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    change(config)
    write_config(workdir / "changed.yaml", config)
    result = snakemake(workdir, "-n", "--configfile", str(workdir / "changed.yaml"))
    return jobs_run(result.stdout + result.stderr)


@contextmanager
def edited(path: Path):
    """Edit ``path`` (append a line) as a user would; restore its bytes and time afterwards.
    Snakemake compares small inputs by content, so a bare touch would not count."""
    before, text = path.stat(), path.read_bytes()
    path.write_bytes(text + b"\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    try:
        yield
    finally:
        path.write_bytes(text)
        os.utime(path, (before.st_atime, before.st_mtime))


def test_evaluation_setting_reruns_only_evaluation(tiny_run):
    workdir, _ = tiny_run
    counts = dry_run_after(workdir, lambda c: c["evaluation"]["bootstrap"].update(samples=300))
    assert set(counts) <= {"evaluate_win_rate", "collect_metrics", "plot_metrics", "write_run_manifest", "all"}
    assert counts["evaluate_win_rate"] == 3


def test_template_change_reruns_the_stages_that_use_it_onward(tiny_run):
    workdir, _ = tiny_run
    with edited(REPO / "data/templates/meta_judge.txt"):
        result = snakemake(workdir, "-n", "--configfile", str(workdir / "config.yaml"))
    counts = jobs_run(result.stdout + result.stderr)
    # iteration 1 from the meta-judge on; iteration 2 (its model changed) from generation on
    assert counts["meta_judge"] == 1 and counts["build_pairs"] == 2 and counts["train_dpo"] == 2
    assert counts["generate_responses"] == 1 and counts["judge_responses"] == 1
    assert "prepare_seed_model" not in counts and "sample_prompts" not in counts


def test_package_code_change_reruns_that_stage_onward(tiny_run):
    workdir, _ = tiny_run
    with edited(REPO / "src/metarewarding/selection.py"):
        result = snakemake(workdir, "-n", "--configfile", str(workdir / "config.yaml"))
    counts = jobs_run(result.stdout + result.stderr)
    # selection.py is used by meta_judge and build_pairs: iteration 1 from its meta-judge on
    assert counts["meta_judge"] == 1 and counts["build_pairs"] == 2 and counts["train_dpo"] == 2
    assert counts["generate_responses"] == 1 and counts["judge_responses"] == 1  # iteration 2 only
    assert "output: results/iter1/responses" not in result.stdout
    assert "output: results/iter1/shards/judgments" not in result.stdout


def digests(workdir: Path) -> dict[str, str]:
    out = {}
    for t in (1, 2):
        for name in RECORDS:
            path = workdir / f"results/iter{t}" / name
            if path.exists():
                out[f"iter{t}/{name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
        weights = workdir / f"results/iter{t}/model/model.safetensors"
        out[f"iter{t}/model"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return out


def test_two_fresh_runs_give_identical_artifacts(tiny_run, tmp_path, tiny_model):
    workdir, _ = tiny_run
    write_config(tmp_path / "config.yaml", tiny_config(tiny_model))
    snakemake(tmp_path, "results/iter2/model", "--configfile", str(tmp_path / "config.yaml"))
    assert digests(tmp_path) == digests(workdir)


def test_killed_run_resumes_without_redoing_finished_jobs(tiny_run, tmp_path, tiny_model):
    workdir, _ = tiny_run
    write_config(tmp_path / "config.yaml", tiny_config(tiny_model))
    cmd = [sys.executable, "-m", "snakemake", "results/iter2/model", "-s", str(REPO / "Snakefile"),
           "-d", str(tmp_path), "--cores", "2", "--profile", str(REPO / "profiles/default"),
           "--configfile", str(tmp_path / "config.yaml")]
    run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "logs/iter1/generate_responses.0.log").exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # snakemake and the running job, mid-generation
    run.wait()
    assert not (tmp_path / "results/iter2/model").exists()
    done_before = {p.name for p in (tmp_path / "results/iter1").glob("*.jsonl")}
    snakemake(tmp_path, "--unlock", "--configfile", str(tmp_path / "config.yaml"))
    resumed = snakemake(tmp_path, "results/iter2/model", "--configfile", str(tmp_path / "config.yaml"))
    counts = jobs_run(resumed.stdout + resumed.stderr)
    assert "prepare_seed_model" not in counts  # finished before the kill: not redone
    if "prompts.jsonl" in done_before:
        assert counts.get("sample_prompts", 0) <= 1
    assert digests(tmp_path) == digests(workdir)


def test_job_killed_mid_stage_resumes_from_its_checkpoint(tiny_run, tmp_path):
    """SIGTERM to the run's process group (Ctrl-C in a terminal sends SIGINT the same way; a
    cluster's time limit sends SIGTERM to the job) while judge_responses is between two
    checkpointed chunks; the restart resumes inside the stage, and the records equal those of
    the uninterrupted tiny run, made with the default chunk size (one chunk)."""
    import shutil

    workdir, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir, symlinks=True,
                    ignore=shutil.ignore_patterns("iter2", "eval", "plots", "report*"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["inference"] = {"checkpoint_every": 1}  # 12 responses: 3 chunks of one batch (5, 5, 2)
    write_config(run_dir / "config.yaml", config)
    judgments = run_dir / "results/iter1/shards/judgments.0.jsonl"
    partial = run_dir / "results/iter1/shards/judgments.0.jsonl.partial"
    before = {p: hashlib.sha256((workdir / p).read_bytes()).hexdigest()
              for p in ["results/iter1/responses.jsonl", "results/iter1/judgments.jsonl",
                        "results/iter1/shards/judgments.0.jsonl"]}
    for name in ["shards/judgments.0.jsonl", "shards/stats/judge_responses.0.json", "judgments.jsonl",
                 "stats/judge_responses.json"]:  # as if the run had got as far as judging
        (run_dir / "results/iter1" / name).unlink()
    cmd = [sys.executable, "-m", "snakemake", "results/iter1/judgments.jsonl",
           "-s", str(REPO / "Snakefile"), "-d", str(run_dir), "--cores", "2",
           "--profile", str(REPO / "profiles/default"), "--configfile", str(run_dir / "config.yaml")]
    env = {**os.environ, "METAREWARDING_CHECKPOINT_PAUSE": "10"}  # time to kill between two chunks
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                           start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (partial.exists() and partial.read_bytes().count(b"\n") >= 2) and time.time() < deadline:
            assert run.poll() is None, run.stdout.read()
            time.sleep(0.1)
        assert partial.exists(), "the judge job never checkpointed a chunk"
        os.killpg(run.pid, signal.SIGTERM)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    # Snakemake takes SIGTERM as "finish the running jobs, start no new ones"; the job itself
    # died of it, so Snakemake reports it failed, removes its outputs and releases the lock
    # (no --unlock needed); the undeclared partial file stays.
    assert run.returncode != 0 and "Will exit after finishing currently running jobs" in output, output
    assert "Error in rule judge_responses" in output
    assert not judgments.exists() and partial.exists()
    completed = sum(len(json.loads(line)["positions"]) for line in partial.read_text().splitlines()[1:])
    assert completed == 5  # one batch of 16 // 3 judgments = 5 responses

    resumed = snakemake(run_dir, "results/iter1/judgments.jsonl", "--configfile", str(run_dir / "config.yaml"))
    counts = jobs_run(resumed.stdout + resumed.stderr)
    assert counts == {"judge_responses": 1, "gather_judgments": 1}, resumed.stdout
    log = (run_dir / "logs/iter1/judge_responses.0.log").read_text()
    assert "resumed from" in log and "5 of 12 responses already completed, 7 to go" in log
    stats = json.loads((run_dir / "results/iter1/shards/stats/judge_responses.0.json").read_text())
    assert stats["resumed_from_checkpoint"] == 5
    assert not partial.exists()
    after = {p: hashlib.sha256((run_dir / p).read_bytes()).hexdigest() for p in before}
    assert after == before


def test_run_manifest_verifies_and_catches_a_changed_output(tiny_run, tmp_path):
    import json
    import shutil

    from metarewarding.provenance import verify

    workdir, _ = tiny_run
    manifest = json.loads((workdir / "results/MANIFEST.json").read_text())
    stage = manifest["stages"]["results/iter1/manifests/build_pairs.json"]
    assert stage["params"]["settings"]["rho"] == 0.0 and stage["versions"]["trl"]
    assert len(stage["inputs"]["responses"]["results/iter1/responses.jsonl"]) == 64
    copy = tmp_path / "run"
    shutil.copytree(workdir / "results", copy / "results")
    os.chdir(copy)
    try:
        assert verify("results/MANIFEST.json") == []
        (copy / "results/iter1/pairs/train.jsonl").write_text("{}\n")
        problems = verify("results/MANIFEST.json")
        assert len(problems) == 1 and problems[0].startswith("results/iter1/pairs/train.jsonl: sha256")
    finally:
        os.chdir(REPO)


def test_archive_packs_the_run_without_models(tiny_run, tmp_path):
    import tarfile

    workdir, _ = tiny_run
    out = tmp_path / "archive.tar.gz"
    from metarewarding.archive import pack_run

    os.chdir(workdir)
    try:
        count = pack_run({"seed": 7}, "results", ["report.html"], False, str(out))
    finally:
        os.chdir(REPO)
    names = tarfile.open(out).getnames()
    assert "README.txt" in names and "config.yaml" in names and "results/MANIFEST.json" in names
    assert "results/iter1/pairs/train.jsonl" in names and "results/metrics.tsv" in names
    assert not any("/model/" in n for n in names) and count == len(names) - 2
