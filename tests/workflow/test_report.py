"""Evaluation end to end on the tiny model, and `snakemake --report` with every plot inside.

One iteration, two evaluation sets: our held-out prompts against the seed's answers, and a set
in Arena-Hard's question format against a provided reference file in AlpacaEval's format (so the
seed itself is really annotated), with the evaluator asked for its verdict directly.
"""

from __future__ import annotations

import base64
import json
import re

import jsonlines
import pytest

from conftest import REPO, jobs_run, snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow

PLOTS = ("win_rate", "length", "score_distribution", "judge_bias", "judge_agreement", "dpo_curves")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model):
    workdir = tmp_path_factory.mktemp("report-run")
    questions = [{"question_id": f"ah-{k}", "category": "c", "turns": [{"content": f"Name {k} colours."}]}
                 for k in range(1, 4)]
    with jsonlines.open(workdir / "arena_questions.jsonl", "w") as out:
        out.write_all(questions)
    reference = [{"instruction": q["turns"][0]["content"], "output": "Red, green and blue " * k,
                  "generator": "provided"} for k, q in enumerate(reversed(questions), start=1)]
    (workdir / "reference.json").write_text(json.dumps(reference))
    config = tiny_config(tiny_model, iterations=[{}])
    config["evaluation"]["sets"]["arena"] = {"source": str(workdir / "arena_questions.jsonl"),
                                             "reference_outputs": str(workdir / "reference.json")}
    config["evaluation"]["evaluator"]["max_new_tokens"] = 0
    write_config(workdir / "config.yaml", config)
    result = snakemake(workdir, "--configfile", str(workdir / "config.yaml"))
    return workdir, result


def read_tsv(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_every_model_and_set_is_evaluated(evaluated):
    workdir, result = evaluated
    counts = jobs_run(result.stdout + result.stderr)
    assert counts["generate_eval_outputs"] == counts["annotate_pairwise"] == counts["evaluate_win_rate"] == 4
    assert counts["evaluate_judge_agreement"] == 2 and counts["evaluate_judge_health"] == 1
    rows = read_tsv(workdir / "results/metrics.tsv")
    assert [r["iteration"] for r in rows] == ["0", "1"]
    assert rows[0]["heldout_win_rate"] == "50.0"  # the seed against its own answers: all ties
    assert rows[0]["heldout_annotated"] == "3" and rows[0]["arena_annotated"] == "3"
    for row in rows:
        for key in ("arena_win_rate", "arena_lc_win_rate", "heldout_mean_chars", "human_agreement"):
            assert row[key] != "", (row["iteration"], key)
    assert rows[0]["score_mean"] == "" and rows[1]["score_mean"] != ""  # health starts at iteration 1


def test_outputs_are_in_alpaca_eval_and_arena_hard_formats(evaluated):
    workdir, _ = evaluated
    outputs = json.loads((workdir / "results/iter1/eval/arena/outputs.json").read_text())
    assert [o["item_id"] for o in outputs] == ["ah-1", "ah-2", "ah-3"]
    assert all({"instruction", "output", "generator", "dataset"} <= set(o) for o in outputs)
    assert {o["generator"] for o in outputs} == {"metarewarding-iter1"}
    with jsonlines.open(workdir / "results/iter1/eval/arena/arena_hard_answers.jsonl") as reader:
        answers = list(reader)
    assert [a["question_id"] for a in answers] == ["ah-1", "ah-2", "ah-3"]
    assert answers[0]["choices"][0]["turns"][0]["content"] == outputs[0]["output"]


def test_annotations_hold_both_orders_and_the_win_rate_their_mean(evaluated):
    workdir, _ = evaluated
    with jsonlines.open(workdir / "results/iter0/eval/arena/annotations.jsonl") as reader:
        annotations = list(reader)
    assert len(annotations) == 3 and not any(a["identical"] for a in annotations)
    for a in annotations:
        assert set(a["verdicts"]) == {"model_first", "reference_first"}
        assert a["texts"]["model_first"].startswith("Winner: ")
    win_rate = json.loads((workdir / "results/iter0/eval/arena/win_rate.json").read_text())
    expected = 100 * sum(a["preference"] for a in annotations) / 3
    assert win_rate["win_rate"] == pytest.approx(expected, abs=1e-3)
    low, high = win_rate["win_rate_ci"]
    assert low <= win_rate["win_rate"] <= high
    agreement = json.loads((workdir / "results/iter1/eval/judge_agreement.json").read_text())
    assert agreement["human_labels"]["items"] == 4 and agreement["evaluator_on_actor_pairs"]["pairs"] >= 1
    health = json.loads((workdir / "results/iter1/eval/judge_health.json").read_text())
    assert health["judge"]["judgments"] == 4 * 3 * 3 and health["meta_judge"]["comparisons"] > 0


def test_report_builds_with_every_plot(evaluated):
    workdir, _ = evaluated
    snakemake(workdir, "--configfile", str(workdir / "config.yaml"), "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    for name in PLOTS:
        assert f"{name}.png" in html, name
    assert "metrics.tsv" in html and "judge_health.json" in html
    assert "length-controlled" in html  # a caption
    images = [base64.b64decode(m) for m in re.findall(r"data:image/png[^,]*,([A-Za-z0-9+/=]+)", html)]
    assert len(images) >= len(PLOTS) and all(i.startswith(b"\x89PNG") for i in images)


def test_plots_are_png_files(evaluated):
    workdir, _ = evaluated
    for name in PLOTS:
        assert (workdir / f"results/plots/{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_sets_never_enter_training(evaluated, repo=REPO):
    workdir, _ = evaluated
    with jsonlines.open(workdir / "results/iter1/prompts.jsonl") as reader:
        drawn = {p["prompt"] for p in reader}
    with jsonlines.open(repo / "data/prompts/eval.jsonl") as reader:
        assert not drawn & {p["prompt"] for p in reader}
