"""The metrics table across models and the report's plots, from hand-made evaluation files."""

from __future__ import annotations

import json

from metarewarding.reporting import collect_metrics, plot_metrics


def win_rate(wr, lc):
    return {"win_rate": wr, "win_rate_ci": [wr - 10, wr + 10], "lc_win_rate": lc, "lc_win_rate_ci": [lc - 5, lc + 5],
            "mean_chars": 200.0, "mean_tokens": 50.0, "annotated": 16}


def agreement(value, actor=None):
    return {"human_labels": {"agreement": value, "agreement_without_ties": value, "spearman": 0.1,
                             "judgment_parse_rate": 1.0},
            "evaluator_on_actor_pairs": None if actor is None else {"agreement": actor,
                                                                     "agreement_without_ties": actor}}


HEALTH = {"judge": {"parse_failure_rate": 0.0, "free_text_parse_rate": 0.1, "score_mean": 2.5, "score_stdev": 1.0,
                    "tie_share": 0.25, "score_histogram": {"0": 1, "1": 2, "2": 3, "3": 0, "4": 0, "5": 1,
                                                           "unparsed": 0}},
          "meta_judge": {"parse_failure_rate": 0.0, "position_bias": 0.6, "score_bias": 0.7,
                         "order_consistency": 0.4},
          "elo_spread": {"mean": 1.5}, "pairs": {"actor_pairs": 10, "judge_pairs": 5},
          "dpo": {"final": {"loss": 0.6, "reward_accuracy": 0.75, "reward_margin": 0.1},
                  "curves": {"step": [1, 2], "loss": [0.69, 0.6], "reward_accuracy": [0.5, 0.75],
                             "reward_margin": [0.0, 0.1]}}}


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_one_row_per_model_and_plots(tmp_path):
    wr = [write(tmp_path / f"wr{t}.json", win_rate(50.0 + 5 * t, 50.0 + t)) for t in range(3)]
    ag = [write(tmp_path / f"ag{t}.json", agreement(0.5, None if t == 0 else 0.6)) for t in range(3)]
    he = [write(tmp_path / f"he{t}.json", HEALTH) for t in (1, 2)]
    metrics = collect_metrics([0, 1, 2], ["heldout"], wr, ag, he, str(tmp_path / "m.tsv"), str(tmp_path / "m.json"))
    lines = (tmp_path / "m.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]
    assert [r["heldout_win_rate"] for r in rows] == ["50.0", "55.0", "60.0"]
    assert rows[1]["heldout_lc_win_rate_low"] == "46.0" and rows[2]["heldout_win_rate_high"] == "70.0"
    assert rows[0]["position_bias"] == "" and rows[1]["position_bias"] == "0.6"  # the seed has no iteration
    assert rows[0]["actor_pair_agreement"] == "" and rows[2]["actor_pair_agreement"] == "0.6"
    assert rows[2]["dpo_final_loss"] == "0.6" and rows[2]["elo_spread"] == "1.5"
    assert metrics["details"]["1"]["dpo_curves"]["loss"] == [0.69, 0.6]

    outputs = {name: str(tmp_path / f"{name}.png") for name in
               ("win_rate", "length", "score_distribution", "judge_bias", "judge_agreement", "dpo_curves")}
    plot_metrics(str(tmp_path / "m.json"), outputs)
    for path in outputs.values():
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plots_survive_missing_data(tmp_path):
    wr = [write(tmp_path / "wr0.json", {"win_rate": None, "win_rate_ci": None, "lc_win_rate": None,
                                         "lc_win_rate_ci": None, "mean_chars": None, "mean_tokens": None,
                                         "annotated": 0})]
    ag = [write(tmp_path / "ag0.json", agreement(None))]
    collect_metrics([0], ["s"], wr, ag, [], str(tmp_path / "m.tsv"), str(tmp_path / "m.json"))
    outputs = {name: str(tmp_path / f"{name}.png") for name in
               ("win_rate", "length", "score_distribution", "judge_bias", "judge_agreement", "dpo_curves")}
    plot_metrics(str(tmp_path / "m.json"), outputs)
    assert all((tmp_path / f"{name}.png").stat().st_size > 0 for name in outputs)
