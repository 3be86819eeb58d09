"""build_pairs on hand-made records, and its pairs accepted by TRL's DPO data preparation."""

from __future__ import annotations

import json

import pytest

from metarewarding.pairs import NoPairsError, build_pairs
from metarewarding.records import read_jsonl, write_jsonl

TEMPLATE = "Q: {question}\nR: {response}\nGrade it."


def response(pid, k, text):
    return {"response_id": f"{pid}-r{k}", "prompt_id": pid, "prompt": f"question {pid}", "response": text}


def judgment(rid, k, score):
    return {"judgment_id": f"{rid}-j{k}", "response_id": rid, "prompt_id": rid.split("-r")[0],
            "judgment": f"judgment {k} of {rid}\nScore: {score}", "score": score}


def meta(first, second, outcome):
    rid = first.rsplit("-j", 1)[0]
    return {"response_id": rid, "first_id": first, "second_id": second, "outcome": outcome}


@pytest.fixture
def files(tmp_path):
    responses = [response("a", 0, "short good"), response("a", 1, "a much longer weaker answer"),
                 response("a", 2, "mid answer"), response("b", 0, "x"), response("b", 1, "y")]
    judgments = [judgment("a-r0", 0, 5), judgment("a-r0", 1, 3), judgment("a-r0", 2, 4),
                 judgment("a-r1", 0, 1), judgment("a-r1", 1, 2), judgment("a-r1", 2, None),
                 judgment("a-r2", 0, 3), judgment("a-r2", 1, 3), judgment("a-r2", 2, 3),
                 judgment("b-r0", 0, 2), judgment("b-r1", 0, 2)]
    # Response a-r0: j0 beats j1 and j2 in both orders; j2 beats j1 in both orders.
    j = "a-r0-j"
    metas = [meta(j + "0", j + "1", 1), meta(j + "1", j + "0", -1), meta(j + "0", j + "2", 1),
             meta(j + "2", j + "0", -1), meta(j + "2", j + "1", 1), meta(j + "1", j + "2", -1)]
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("responses", "judgments", "metas")}
    write_jsonl(paths["responses"], responses)
    write_jsonl(paths["judgments"], judgments)
    write_jsonl(paths["metas"], metas)
    (tmp_path / "judge.txt").write_text(TEMPLATE)
    return tmp_path, paths


def run(tmp_path, paths, settings=None, metas=True):
    settings = settings or {"rho": 0.0, "max_chosen_chars": None, "judge_max_chosen_chars": None}
    out = {k: str(tmp_path / f"{k}.out.jsonl") for k in ("actor", "judge", "train")}
    stats = build_pairs(str(paths["responses"]), str(paths["judgments"]), str(paths["metas"]) if metas else None,
                        str(tmp_path / "judge.txt"), settings, 0.01, 1, out["actor"], out["judge"], out["train"],
                        str(tmp_path / "stats.json"))
    return stats, {k: read_jsonl(v, allow_empty=True) for k, v in out.items()}


def test_actor_and_judge_pairs_on_hand_worked_example(files):
    tmp_path, paths = files
    stats, out = run(tmp_path, paths)
    # rewards: a-r0 = 4, a-r1 = 1.5 (one unparsed), a-r2 = 3; b tied at 2 -> skipped
    assert stats["actor_outcomes"] == {"best_vs_worst": 1, "all_tied": 1}
    (actor,) = out["actor"]
    assert (actor["meta"]["chosen_id"], actor["meta"]["rejected_id"]) == ("a-r0", "a-r1")
    assert actor["meta"]["chosen_reward"] == 4 and actor["meta"]["rejected_reward"] == 1.5
    assert actor["prompt"] == [{"role": "user", "content": "question a"}]
    (judge,) = out["judge"]
    assert (judge["meta"]["chosen_id"], judge["meta"]["rejected_id"]) == ("a-r0-j0", "a-r0-j1")
    assert judge["prompt"][-1]["content"] == "Q: question a\nR: short good\nGrade it."
    assert judge["chosen"] == [{"role": "assistant", "content": "judgment 0 of a-r0\nScore: 5"}]
    assert judge["meta"]["position_weights"]["source"] == "response"
    assert len(out["train"]) == 2
    assert json.loads((tmp_path / "stats.json").read_text())["train_pairs"] == 2


def test_length_control_prefers_the_short_good_response(files):
    tmp_path, paths = files
    # rho 0.5: upper threshold (4+1.5)/2 = 2.75 admits a-r2 (3, 10 chars) and a-r0 (4, 10 chars)
    _, out = run(tmp_path, paths, {"rho": 0.5, "max_chosen_chars": None, "judge_max_chosen_chars": None}, metas=False)
    assert out["actor"][0]["meta"]["chosen_id"] == "a-r0"  # equal length: higher reward wins the tie
    assert out["judge"] == []


def test_zero_pairs_stops_with_the_stats(files):
    tmp_path, paths = files
    settings = {"rho": 0.0, "max_chosen_chars": 3, "judge_max_chosen_chars": 3}
    with pytest.raises(NoPairsError) as err:
        run(tmp_path, paths, settings)
    assert '"chosen_too_long": 1' in str(err.value) and '"all_tied": 1' in str(err.value)
    assert not (tmp_path / "train.out.jsonl").exists()


def test_pairs_pass_trl_dpo_data_preparation(files, tiny_model):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tmp_path, paths = files
    _, out = run(tmp_path, paths)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in out["train"]]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), use_cpu=True, bf16=False, report_to="none",
                     per_device_train_batch_size=2, max_length=256)
    trainer = DPOTrainer(model=str(tiny_model), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert len(prepared) == 2
    columns = set(prepared.column_names)
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns or {"input_ids"} <= columns
