"""The DAG for the default and the paper config, and `snakemake --lint`."""

from __future__ import annotations

import re

from conftest import REPO, jobs_run, snakemake, tiny_config, write_config


def dry_run(tmp_path, *configfile):
    """A dry run in an empty work directory that sees the repository's data/."""
    (tmp_path / "data").symlink_to(REPO / "data")
    return snakemake(tmp_path, "-n", *configfile).stdout


def test_default_config_lists_every_stage_of_both_iterations(tmp_path):
    out = dry_run(tmp_path, "--configfile", str(REPO / "config.yaml"))
    assert jobs_run(out) == {
        "prepare_seed_model": 1, "sample_prompts": 2, "generate_responses": 2, "judge_responses": 2,
        "meta_judge": 2, "gather_responses": 2, "gather_judgments": 2, "gather_meta_judgments": 2, "build_pairs": 2, "train_dpo": 2, "all": 1,
        # evaluation of 3 models (iteration 0 = the seed) on 1 set; judge health of 2 iterations
        "generate_eval_outputs": 3, "annotate_pairwise": 3, "evaluate_win_rate": 3, "evaluate_judge_agreement": 3,
        "annotate_actor_pairs": 2, "evaluate_judge_health": 2, "collect_metrics": 1, "plot_metrics": 1,
        "write_run_manifest": 1,
    }


def test_paper_config_has_four_iterations_and_meta_judge_only_in_1_and_2(tmp_path):
    stdout = dry_run(tmp_path, "--configfile", str(REPO / "configs/paper-llama3-8b.yaml"))
    counts = jobs_run(stdout)
    assert counts == {
        # 8 shards per model stage (one per GPU of a node)
        "prepare_seed_model": 1, "train_eft": 1, "sample_prompts": 4, "generate_responses": 32,
        "judge_responses": 32, "meta_judge": 16, "gather_responses": 4, "gather_judgments": 4,
        "gather_meta_judgments": 2, "build_pairs": 4, "train_dpo": 4, "all": 1,
        # evaluation of 5 models on 2 sets (held-out prompts and MT-Bench)
        "generate_eval_outputs": 10, "annotate_pairwise": 10, "evaluate_win_rate": 10, "evaluate_judge_agreement": 5,
        "annotate_actor_pairs": 4, "evaluate_judge_health": 4, "collect_metrics": 1, "plot_metrics": 1,
        "write_run_manifest": 1,
    }
    meta_outputs = set(re.findall(r"results/iter(\d+)/meta_judgments\.jsonl", stdout))
    assert meta_outputs == {"1", "2"}


def test_iteration_without_judge_training_has_no_meta_judge(tmp_path, tiny_model):
    config = write_config(tmp_path / "config.yaml", tiny_config(tiny_model))
    out = snakemake(tmp_path, "-n", "--configfile", str(config)).stdout
    assert jobs_run(out)["meta_judge"] == 1
    assert "results/iter2/meta_judgments.jsonl" not in out


def test_lint_is_clean(tmp_path):
    (tmp_path / "data").symlink_to(REPO / "data")
    result = snakemake(tmp_path, "--lint", "--configfile", str(REPO / "config.yaml"))
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, tiny_model):
    config = tiny_config(tiny_model)
    config["iterations"][1]["pairs"]["rho"] = 1.5
    write_config(tmp_path / "config.yaml", config)
    result = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), check=False)
    assert result.returncode != 0
    assert "iterations[1].pairs.rho: 1.5 is greater than the maximum of 1" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_pool_too_small_stops_before_any_job(tmp_path, tiny_model):
    config = tiny_config(tiny_model)
    config["iteration_defaults"]["prompts"] = 200
    write_config(tmp_path / "config.yaml", config)
    result = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), check=False)
    assert result.returncode != 0
    assert "but the iterations need 400" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_snakefmt_is_clean():
    import subprocess

    result = subprocess.run(["snakefmt", "--check", "Snakefile", "rules/"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
