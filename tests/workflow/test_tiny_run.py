"""End to end on a tiny random model: every stage runs, outputs are what the next stage needs,
and a changed parameter reruns only what depends on it."""

from __future__ import annotations

import json

import jsonlines
import pytest
import yaml

from conftest import jobs_run, snakemake, tiny_config, write_config


def read(path):
    with jsonlines.open(path) as reader:
        return list(reader)


def test_every_stage_ran_and_left_its_outputs(tiny_run):
    workdir, result = tiny_run
    assert jobs_run(result.stdout + result.stderr) == {
        "prepare_seed_model": 1, "sample_prompts": 2, "generate_responses": 2, "judge_responses": 2,
        "meta_judge": 1, "gather_responses": 2, "gather_judgments": 2, "gather_meta_judgments": 1, "build_pairs": 2, "train_dpo": 2, "all": 1,
        "generate_eval_outputs": 3, "annotate_pairwise": 3, "evaluate_win_rate": 3, "evaluate_judge_agreement": 3,
        "annotate_actor_pairs": 2, "evaluate_judge_health": 2, "collect_metrics": 1, "plot_metrics": 1,
        "write_run_manifest": 1,
    }
    for t in (1, 2):
        assert (workdir / f"results/iter{t}/model/model.safetensors").is_file()
        assert (workdir / f"logs/iter{t}/train_dpo.log").is_file()
        assert (workdir / f"benchmarks/iter{t}/judge_responses.0.tsv").is_file()
    assert not (workdir / "results/iter2/meta_judgments.jsonl").exists()


def test_record_counts_follow_the_config(tiny_run):
    workdir, _ = tiny_run
    prompts = [read(workdir / f"results/iter{t}/prompts.jsonl") for t in (1, 2)]
    assert [len(p) for p in prompts] == [4, 4]
    assert not {p["prompt_id"] for p in prompts[0]} & {p["prompt_id"] for p in prompts[1]}
    responses = read(workdir / "results/iter1/responses.jsonl")
    judgments = read(workdir / "results/iter1/judgments.jsonl")
    assert len(responses) == 4 * 3 and len(judgments) == 4 * 3 * 3
    metas = read(workdir / "results/iter1/meta_judgments.jsonl")
    stats = json.loads((workdir / "results/iter1/stats/meta_judge.json").read_text())
    assert len(metas) == stats["selected_responses"] * 3 * 2
    for m in metas:  # both orders of every pair
        assert any(o["first_id"] == m["second_id"] and o["second_id"] == m["first_id"] for o in metas)


def test_pairs_trace_back_to_their_sources(tiny_run):
    workdir, _ = tiny_run
    responses = {r["response_id"]: r for r in read(workdir / "results/iter1/responses.jsonl")}
    judgments = {j["judgment_id"]: j for j in read(workdir / "results/iter1/judgments.jsonl")}
    actor = read(workdir / "results/iter1/pairs/actor.jsonl")
    judge = read(workdir / "results/iter1/pairs/judge.jsonl")
    train = read(workdir / "results/iter1/pairs/train.jsonl")
    assert actor, "iteration 1 should have actor pairs"
    for pair in actor:
        assert pair["chosen"][0]["content"] == responses[pair["meta"]["chosen_id"]]["response"]
        assert pair["meta"]["chosen_reward"] > pair["meta"]["rejected_reward"]
    for pair in judge:
        assert pair["chosen"][0]["content"] == judgments[pair["meta"]["chosen_id"]]["judgment"]
        assert pair["meta"]["chosen_elo"] > pair["meta"]["rejected_elo"]
    assert sorted(p["meta"]["pair_id"] for p in train) == sorted(p["meta"]["pair_id"] for p in actor + judge)


def test_trained_models_load_with_tokenizer_and_chat_template(tiny_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir, _ = tiny_run
    for t in (1, 2):
        folder = workdir / f"results/iter{t}/model"
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.chat_template
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.num_parameters() > 0
    metrics = json.loads((workdir / "results/iter1/stats/train_dpo.json").read_text())
    assert metrics["steps"] and "rewards/accuracies" in metrics["steps"][0]


def test_nothing_reruns_when_nothing_changed(tiny_run):
    workdir, _ = tiny_run
    result = snakemake(workdir, "-n", "--configfile", str(workdir / "config.yaml"))
    assert "Nothing to be done" in result.stdout + result.stderr


def test_changing_iteration_2_rho_reruns_only_its_pairs_and_training(tiny_run):
    workdir, _ = tiny_run
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["iterations"][1]["pairs"]["rho"] = 0.4
    write_config(workdir / "changed.yaml", config)
    result = snakemake(workdir, "-n", "--configfile", str(workdir / "changed.yaml"))
    assert jobs_run(result.stdout + result.stderr) == {
        "build_pairs": 1, "train_dpo": 1, "all": 1,
        # iteration 2's pairs and model changed: their evaluation, and the table and plots
        "generate_eval_outputs": 1, "annotate_pairwise": 1, "evaluate_win_rate": 1, "annotate_actor_pairs": 1,
        "evaluate_judge_agreement": 1, "evaluate_judge_health": 1, "collect_metrics": 1, "plot_metrics": 1,
        "write_run_manifest": 1,
    }
    assert "output: results/iter2/pairs/actor.jsonl" in result.stdout
    assert "output: results/iter1/" not in result.stdout


def test_changing_iteration_1_judge_settings_reruns_iteration_1_onward(tiny_run):
    workdir, _ = tiny_run
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    config["iterations"][0] = {"judge": {"judgments": 4}}
    write_config(workdir / "changed.yaml", config)
    result = snakemake(workdir, "-n", "--configfile", str(workdir / "changed.yaml"))
    counts = jobs_run(result.stdout + result.stderr)
    assert counts["judge_responses"] == 2 and counts["generate_responses"] == 1
    assert counts["gather_judgments"] == 2
    assert "prepare_seed_model" not in counts and "sample_prompts" not in counts


def test_sharded_stages_gather_in_order_and_a_failed_shard_reruns_alone(tmp_path, tiny_model):
    config = tiny_config(tiny_model, shards={"generation": 2, "judging": 2, "meta_judging": 2})
    config["iterations"] = [{}]
    write_config(tmp_path / "config.yaml", config)
    configfile = ("--configfile", str(tmp_path / "config.yaml"))
    snakemake(tmp_path, *configfile, "--until", "judge_responses")
    # as if shard 1 had failed: its outputs are missing, shard 0's are kept
    for path in ["shards/judgments.1.jsonl", "shards/stats/judge_responses.1.json"]:
        (tmp_path / "results/iter1" / path).unlink()
    rerun = snakemake(tmp_path, *configfile, "-n", "results/iter1/judgments.jsonl")
    assert jobs_run(rerun.stdout + rerun.stderr) == {"judge_responses": 1, "gather_judgments": 1}
    assert "wildcards: t=1, shard=1" in rerun.stdout and "shard=0" not in rerun.stdout

    result = snakemake(tmp_path, *configfile)
    counts = jobs_run(result.stdout + result.stderr)
    assert counts["judge_responses"] == 1 and counts["meta_judge"] == 2 and "generate_responses" not in counts
    prompts = [p["prompt_id"] for p in read(tmp_path / "results/iter1/prompts.jsonl")]
    responses = read(tmp_path / "results/iter1/responses.jsonl")
    assert list(dict.fromkeys(r["prompt_id"] for r in responses)) == prompts  # shard order kept
    shard_sizes = [len(read(tmp_path / f"results/iter1/shards/judgments.{s}.jsonl")) for s in (0, 1)]
    assert shard_sizes == [2 * 3 * 3, 2 * 3 * 3]
    stats = json.loads((tmp_path / "results/iter1/stats/judge_responses.json").read_text())
    assert stats["shards"] == 2 and stats["judgments"] == 36 and len(stats["seeds"]) == 2
