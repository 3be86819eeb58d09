"""End to end on a tiny random model: every stage runs, outputs are what the next stage needs,
and a changed parameter reruns only what depends on it."""

from __future__ import annotations

import json

import jsonlines
import pytest
import yaml

from conftest import jobs_run, snakemake, tiny_config, write_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    workdir = tmp_path_factory.mktemp("tiny-run")
    write_config(workdir / "config.yaml", tiny_config(tiny_model))
    result = snakemake(workdir, "--configfile", str(workdir / "config.yaml"))
    return workdir, result


def read(path):
    with jsonlines.open(path) as reader:
        return list(reader)


def test_every_stage_ran_and_left_its_outputs(tiny_run):
    workdir, result = tiny_run
    assert jobs_run(result.stdout + result.stderr) == {
        "prepare_seed_model": 1, "sample_prompts": 2, "generate_responses": 2, "judge_responses": 2,
        "meta_judge": 1, "build_pairs": 2, "train_dpo": 2, "all": 1,
    }
    for t in (1, 2):
        assert (workdir / f"results/iter{t}/model/model.safetensors").is_file()
        assert (workdir / f"logs/iter{t}/train_dpo.log").is_file()
        assert (workdir / f"benchmarks/iter{t}/judge_responses.tsv").is_file()
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
    assert jobs_run(result.stdout + result.stderr) == {"build_pairs": 1, "train_dpo": 1, "all": 1}
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
    assert "prepare_seed_model" not in counts and "sample_prompts" not in counts
