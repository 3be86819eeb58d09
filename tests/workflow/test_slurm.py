"""The tiny workflow on a real single-node SLURM (tests/slurm/start-local-slurm.sh).

Every job that is not a local rule goes through sbatch and shows up in SLURM's accounting with
the requests of the profile; the outputs equal those of a local run with the same seed. With
fake GPUs (SLURM_LOCAL_GPUS=2) the GPU profile's requests reach sbatch and the model jobs get a
gres/gpu allocation. Without a reachable SLURM the tests skip, and fail when CI is set.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from conftest import REPO, jobs_run, snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow

SLURM_PROFILE = REPO / "profiles/slurm"
CPU_PROFILE = REPO / "profiles/slurm-cpu"
# Short test jobs: poll SLURM often (the profiles' values suit real clusters).
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "6", "--seconds-between-status-checks", "6")
RUN_LIMIT_S = 1200  # whole run; snakemake gets SIGINT (it then scancels its jobs), SIGKILL 60 s later
# The Meta-Rewarding loop of the tiny experiment (evaluation left out to keep CI short; the
# profiles' evaluation requests are seen by the dry run in test_profile_requests_in_a_dry_run).
LOOP_TARGETS = [f"results/iter{t}/{path}" for t in (1, 2)
                for path in ("model", "pairs/train.jsonl", "stats/train_dpo.json")]
JSONL_OUTPUTS = [
    "results/iter1/prompts.jsonl", "results/iter2/prompts.jsonl",
    "results/iter1/responses.jsonl", "results/iter2/responses.jsonl",
    "results/iter1/judgments.jsonl", "results/iter2/judgments.jsonl",
    "results/iter1/meta_judgments.jsonl",
    *(f"results/iter{t}/pairs/{name}.jsonl" for t in (1, 2) for name in ("actor", "judge", "train")),
]


@functools.cache
def slurm_problem() -> str | None:
    """Why SLURM cannot run the tests here, or None when it can."""
    missing = [tool for tool in ("sbatch", "sacct", "scontrol", "sinfo") if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not found"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        answer = (ping.stdout + ping.stderr).strip() or "no answer"
        return f"slurmctld does not answer: {answer.splitlines()[0]}"
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout.split()
    if not set(states) & {"idle", "mixed", "allocated"}:
        return f"no usable node (sinfo states: {states})"
    accounting = subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True, text=True, timeout=30)
    if accounting.returncode != 0:
        return f"sacct fails (no slurmdbd?): {accounting.stderr.strip()}"
    return None


def require_slurm() -> None:
    problem = slurm_problem()
    if problem is None:
        return
    message = f"no usable SLURM: {problem}; start one with `bash tests/slurm/start-local-slurm.sh`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def node_gpus() -> int:
    """GPUs (gres/gpu) the SLURM nodes advertise."""
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30).stdout
    return sum(int(n) for n in re.findall(r"gpu(?::[\w.]+)?:(\d+)", gres))


def snakemake_on_slurm(workdir: Path, *args: str) -> str:
    """Run the workflow in ``workdir`` as a user would on a cluster; Snakemake's output."""
    cmd = ["timeout", "-s", "INT", "-k", "60", str(RUN_LIMIT_S),
           sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--profile", str(SLURM_PROFILE), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_LIMIT_S + 120)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        slurm_logs = sorted((workdir / ".snakemake/slurm_logs").rglob("*.log"))
        tails = "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in slurm_logs[-3:])
        raise AssertionError(f"snakemake on SLURM failed ({result.returncode}):\n{output[-6000:]}{tails}")
    return output


def run_id(output: str) -> str:
    """The run's SLURM job name: the plugin names every job of one run with one UUID."""
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, "the SLURM executor did not report its run ID"
    return match.group(1)


def sacct_records(name: str) -> list[dict]:
    """SLURM's accounting records of the jobs (allocations, not steps) named ``name``."""
    fields = ["JobID", "JobName", "Comment", "State", "AllocCPUS", "ReqMem", "Timelimit", "AllocTRES"]
    start = f"{datetime.now() - timedelta(days=1):%Y-%m-%dT%H:%M}"
    out = subprocess.run(["sacct", "-n", "-P", "-X", "--name", name, "-S", start, "-o", ",".join(fields)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def rule_of(comment: str, rules) -> str:
    """The plugin's job comment is rule_<rule> or rule_<rule>_wildcards_<values>."""
    matches = [r for r in rules if comment == f"rule_{r}" or comment.startswith(f"rule_{r}_wildcards_")]
    assert len(matches) == 1, f"job comment {comment!r} names none or several of {sorted(rules)}"
    return matches[0]


def submitted_jobs(output: str) -> tuple[Counter, Counter]:
    """(remote, local) job counts per rule, from Snakemake's 'rule X:' / 'localrule X:' lines."""
    remote = Counter(re.findall(r"^rule (\w+):$", output, re.M))
    local = Counter(re.findall(r"^localrule (\w+):$", output, re.M))
    return remote, local


def fitted_requests(gpus: int) -> dict[str, dict]:
    """profiles/slurm's set-resources cut down to the 2-core, 24 GB test node with ``gpus`` fake
    GPUs (larger requests never start there): the 8-GPU training requests become ``gpus``."""
    profile = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())
    fitted = {}
    for rule, resources in profile["set-resources"].items():
        fitted[rule] = {**resources, "cpus_per_task": min(resources["cpus_per_task"], 2),
                        "mem_mb": min(resources["mem_mb"], 4000)}
        if "gpu" in resources:
            fitted[rule]["gpu"] = min(resources["gpu"], gpus)
    return fitted


def gpu_profile_resources(gpus: int) -> list[str]:
    """The fitted requests as --set-resources arguments."""
    args = []
    for rule, fitted in fitted_requests(gpus).items():
        args += [f"{rule}:{key}={value}" for key, value in fitted.items()]
    return args


def memory_mb(req_mem: str) -> int:
    """sacct's ReqMem ('4000M', '4G', older '4000Mn') in MB."""
    value, unit = re.fullmatch(r"([\d.]+)([KMGT]?)[nc]?", req_mem).groups()
    return round(float(value) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "": 1}[unit])


def minutes(time_limit: str) -> int:
    """sacct's Timelimit ('[D-]HH:MM:SS') in minutes."""
    days, _, clock = time_limit.rpartition("-")
    hours, mins, secs = (int(x) for x in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins + secs // 60


def experiment_dir(tmp_path_factory, name: str, config: dict) -> Path:
    """A work directory with the experiment's config.yaml and the repository's data/."""
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "data").symlink_to(REPO / "data")
    write_config(workdir / "config.yaml", config)
    return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model):
    """The tiny experiment's loop on SLURM (profiles/slurm + profiles/slurm-cpu) and, at the same
    time, locally as the reference (the SLURM run spends most of its time waiting for polls)."""
    config = tiny_config(tiny_model)
    slurm_dir = experiment_dir(tmp_path_factory, "slurm-run", config)
    local_dir = experiment_dir(tmp_path_factory, "local-run", config)
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(snakemake, local_dir, *LOOP_TARGETS, "--configfile", str(local_dir / "config.yaml"))
        output = snakemake_on_slurm(slurm_dir, "--profile", str(CPU_PROFILE), *FAST_POLLING,
                                    *LOOP_TARGETS, "--configfile", str(slurm_dir / "config.yaml"))
        local.result()
    return slurm_dir, output, local_dir


def test_every_job_went_through_sbatch_with_the_profiles_requests(request):
    require_slurm()
    _, output, _ = request.getfixturevalue("runs")
    remote, local = submitted_jobs(output)
    counts = jobs_run(output)
    assert remote + local == Counter(counts), "every job is either submitted or a local rule"
    assert set(local) <= {"gather_responses", "gather_judgments", "gather_meta_judgments"}
    assert {"prepare_seed_model", "sample_prompts", "generate_responses", "judge_responses",
            "meta_judge", "build_pairs", "train_dpo"} <= set(remote)

    records = sacct_records(run_id(output))
    assert len(records) == sum(remote.values()) == len(re.findall(r"has been submitted with SLURM jobid", output))
    assert Counter(rule_of(r["Comment"], remote) for r in records) == remote
    assert {r["State"] for r in records} == {"COMPLETED"}

    requests = yaml.safe_load((CPU_PROFILE / "config.yaml").read_text())["set-resources"]
    for record in records:
        wanted = requests[rule_of(record["Comment"], remote)]
        assert int(record["AllocCPUS"]) == wanted["cpus_per_task"], record
        assert memory_mb(record["ReqMem"]) == wanted["mem_mb"], record
        assert minutes(record["Timelimit"]) == wanted["runtime"], record
        assert "gres/gpu" not in record["AllocTRES"], record


def test_outputs_equal_a_local_run_with_the_same_seed(request):
    require_slurm()
    workdir, _, local_dir = request.getfixturevalue("runs")
    for relative in JSONL_OUTPUTS:
        expected = (local_dir / relative).read_bytes()
        # iteration 2 does not train the judge (tiny_config), so it has no judge pairs
        assert bool(expected) != relative.endswith("iter2/pairs/judge.jsonl"), f"{relative}: {len(expected)} bytes"
        assert (workdir / relative).read_bytes() == expected, f"{relative} differs from the local run"


def test_trained_weights_equal_a_local_run(request):
    require_slurm()
    import torch
    from safetensors.torch import load_file

    workdir, _, local_dir = request.getfixturevalue("runs")
    for t in (1, 2):
        ours = load_file(workdir / f"results/iter{t}/model/model.safetensors")
        theirs = load_file(local_dir / f"results/iter{t}/model/model.safetensors")
        assert ours.keys() == theirs.keys()
        for name, tensor in theirs.items():
            assert torch.allclose(ours[name], tensor, rtol=0, atol=1e-6), f"iter{t} {name} differs"


def test_gpu_requests_reach_sbatch_on_fake_gpus(tmp_path_factory, tiny_model):
    """profiles/slurm itself (GPUs kept, sizes cut to the node) on a node with fake GPUs: one
    iteration with stage 0, so that every rule of the loop, and every GPU rule, submits a job."""
    require_slurm()
    if node_gpus() == 0:
        message = "the SLURM node has no GPUs; start it with SLURM_LOCAL_GPUS=2 tests/slurm/start-local-slurm.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # Training on every GPU of its job: DDP with one process per (fake) GPU, on CPU with gloo.
    config = tiny_config(tiny_model, iterations=[{}], eft={
        "enabled": True, "demonstrations": str(REPO / "data/eft/judge_demonstrations.jsonl"),
        "max_length": 1536, "epochs": 0.1},  # the judge prompts: 700-1,200 tokens
        training={"distributed": {"strategy": "ddp"}})
    workdir = experiment_dir(tmp_path_factory, "slurm-gpu-run", config)
    targets = ["results/iter1/model", "results/iter1/pairs/train.jsonl", "results/iter1/stats/train_dpo.json"]
    output = snakemake_on_slurm(workdir, *FAST_POLLING, *targets, "--set-resources", *gpu_profile_resources(node_gpus()),
                                "--configfile", str(workdir / "config.yaml"))

    remote, _ = submitted_jobs(output)
    records = sacct_records(run_id(output))
    assert Counter(rule_of(r["Comment"], remote) for r in records) == remote
    assert {r["State"] for r in records} == {"COMPLETED"}
    requests = fitted_requests(node_gpus())
    loop_gpu_rules = {"train_eft", "generate_responses", "judge_responses", "meta_judge", "train_dpo"}
    assert {rule for rule in loop_gpu_rules if requests[rule].get("gpu")} == loop_gpu_rules
    assert loop_gpu_rules <= set(remote), "every GPU rule of the loop ran a job"
    for record in records:
        rule = rule_of(record["Comment"], remote)
        gpus = re.search(r"gres/gpu=(\d+)", record["AllocTRES"])
        assert (int(gpus.group(1)) if gpus else 0) == requests[rule].get("gpu", 0), record
        assert minutes(record["Timelimit"]) == requests[rule]["runtime"], record
    # The training jobs ran one process per GPU of their allocation.
    for stage, iteration in (("train_eft", 0), ("train_dpo", 1)):
        metrics = json.loads((workdir / f"results/iter{iteration}/stats/{stage}.json").read_text())
        assert metrics["processes"] == requests[stage]["gpu"] == min(8, node_gpus()), metrics


def job_resources(output: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n\s*\n", output):
        rule = re.search(r"^(?:local)?rule (\w+):$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and resources:
            jobs.append((rule.group(1), dict(item.split("=", 1) for item in resources.group(1).split(", "))))
    return jobs


def local_rules() -> set[str]:
    """The workflow's `localrules:` (a dry run does not mark them), and `all`, which runs nothing."""
    names = {"all"}
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for block in re.findall(r"^localrules:((?:[ \t]*\n?[ \t]+\w+,?)+)", path.read_text(), re.M):
            names |= set(re.findall(r"\w+", block))
    return names


def test_profile_requests_in_a_dry_run(tmp_path):
    """The paper's schedule under profiles/slurm: GPUs for every model job, none for the rest."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        message = "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake(tmp_path, "-n", "--profile", str(SLURM_PROFILE),
                       "--configfile", str(REPO / "configs/paper-llama3-8b.yaml"))
    jobs = job_resources(result.stdout)
    requests = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["set-resources"]
    model_rules = {"train_eft", "generate_responses", "judge_responses", "meta_judge", "train_dpo"}
    assert model_rules <= {rule for rule, _ in jobs}
    assert sum(rule == "generate_responses" for rule, _ in jobs) == 8 * 4  # 8 shards x 4 iterations
    assert sum(rule == "meta_judge" for rule, _ in jobs) == 8 * 2
    local = local_rules()
    unlisted = {rule for rule, _ in jobs if rule not in local and rule not in requests}
    assert not unlisted, f"profiles/slurm has no set-resources entry for the submitted rules {unlisted}"
    for rule, resources in jobs:
        if rule not in local:  # local rules are never submitted
            wanted = requests[rule]
            assert resources.get("gpu") == (str(wanted["gpu"]) if "gpu" in wanted else None), (rule, resources)
            assert resources["cpus_per_task"] == str(wanted["cpus_per_task"]), (rule, resources)
            assert resources["mem_mb"] == str(wanted["mem_mb"]) and resources["runtime"] == str(wanted["runtime"])
        if rule in model_rules:  # inference on one GPU per shard, training on a whole 8-GPU node
            assert resources["gpu"] == ("8" if rule.startswith("train_") else "1"), (rule, resources)
