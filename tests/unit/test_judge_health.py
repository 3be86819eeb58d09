"""Judge-health figures on hand-made judgments, meta-judgments, pairs and training stats."""

from __future__ import annotations

import json

import pytest

from metarewarding.judge_health import evaluate_judge_health
from metarewarding.records import write_jsonl


def judgment(prompt, response, k, score, free=None):
    rid = f"{prompt}-{response}"
    return {"judgment_id": f"{rid}-j{k}", "response_id": rid, "prompt_id": prompt, "score": score,
            "free_score": free, "parse_error": None if score is not None else "no_score"}


def meta(first, second, first_score, second_score, outcome):
    return {"first_id": first, "second_id": second, "first_score": first_score, "second_score": second_score,
            "outcome": outcome}


@pytest.fixture
def iteration(tmp_path):
    judgments = [judgment("p1", "r0", 0, 5, 5), judgment("p1", "r0", 1, 3), judgment("p1", "r1", 0, 3),
                 judgment("p1", "r1", 1, None), judgment("p2", "r0", 0, 2), judgment("p2", "r1", 0, 2),
                 judgment("p3", "r0", 0, None), judgment("p3", "r1", 0, 4)]
    j0, j1, j2 = "p1-r0-j0", "p1-r0-j1", "p1-r0-j2"
    metas = [meta(j0, j1, 5, 3, 1), meta(j1, j0, 3, 5, -1),   # consistent: j0 wins both orders
             meta(j0, j2, 5, 3, 1), meta(j2, j0, 3, 5, 1),    # inconsistent: the first shown wins
             meta(j1, j2, 3, 3, 0), meta(j2, j1, 3, 3, -1)]   # one unparsed
    pairs = [{"meta": {"elo": {"x": 0.5, "y": -0.5}}}, {"meta": {"elo": {"a": 0.2, "b": 0.1, "c": -0.3}}}]
    build = {"prompts": 3, "actor_pairs": 1, "actor_outcomes": {"selected": 1, "all_tied": 1, "too_few_rewards": 1},
             "judge_pairs": 2, "judge_outcomes": {"selected": 2}, "train_pairs": 3}
    train = {"pairs": 3, "steps": [
        {"loss": 0.6931, "rewards/accuracies": 0.5, "rewards/margins": 0.0, "step": 1},
        {"loss": 0.61, "rewards/accuracies": 1.0, "rewards/margins": 0.25, "step": 2}]}
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("judgments", "metas", "pairs")}
    write_jsonl(paths["judgments"], judgments)
    write_jsonl(paths["metas"], metas)
    write_jsonl(paths["pairs"], pairs)
    paths["build"], paths["train"] = tmp_path / "build.json", tmp_path / "train.json"
    paths["build"].write_text(json.dumps(build))
    paths["train"].write_text(json.dumps(train))
    return tmp_path, paths


def run(tmp_path, paths, metas=True):
    return evaluate_judge_health(str(paths["judgments"]), str(paths["metas"]) if metas else None,
                                 str(paths["pairs"]), str(paths["build"]), str(paths["train"]), (0, 5), 1,
                                 str(tmp_path / "health.json"))


def test_judge_figures(iteration):
    health = run(*iteration)["judge"]
    assert health["judgments"] == 8 and health["parse_failure_rate"] == 0.25
    assert health["score_histogram"] == {"0": 0, "1": 0, "2": 2, "3": 2, "4": 1, "5": 1, "unparsed": 2}
    assert health["score_mean"] == pytest.approx(19 / 6, abs=1e-4)
    assert health["score_stdev"] == pytest.approx(1.0672, abs=1e-4)
    # p1 rewards 4 and 3; p2 ties at 2; p3 has a single valid reward and is not counted
    assert health["tie_share"] == 0.5
    assert health["free_text_parse_rate"] == 0.125
    assert health["parse_failures"] == {"no_score": 2}


def test_meta_judge_figures(iteration):
    health = run(*iteration)["meta_judge"]
    assert health["comparisons"] == 6
    assert health["parse_failure_rate"] == pytest.approx(1 / 6, abs=1e-4)
    assert health["position_bias"] == pytest.approx(3 / 5)     # first shown won 3 of 5 parsed
    assert health["score_bias"] == pytest.approx(3 / 4)        # higher score won 3 of 4 unequal pairs
    assert health["order_consistency"] == pytest.approx(1 / 2)  # (j0,j1) yes, (j0,j2) no, (j1,j2) unparsed


def test_elo_pairs_and_dpo(iteration):
    tmp_path, paths = iteration
    health = run(tmp_path, paths)
    assert health["elo_spread"] == {"responses": 2, "mean": 0.75, "max": 1.0}
    assert health["pairs"]["actor_outcomes"]["all_tied"] == 1 and health["pairs"]["judge_pairs"] == 2
    assert health["dpo"]["final"] == {"loss": 0.61, "reward_accuracy": 1.0, "reward_margin": 0.25}
    assert health["dpo"]["curves"]["step"] == [1, 2] and health["dpo"]["curves"]["loss"] == [0.6931, 0.61]
    assert json.loads((tmp_path / "health.json").read_text()) == health


def test_iteration_without_meta_judge(iteration):
    health = run(*iteration, metas=False)
    assert health["meta_judge"] is None and health["judge"]["judgments"] == 8
