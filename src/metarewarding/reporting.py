"""The metrics table across models and its plots (for ``snakemake --report``).

Row t of the table is the model of iteration t (row 0 the seed): its win rates against the
reference on every evaluation set, its mean output length and its agreement with the labels as
a judge; and, for t >= 1, the health of iteration t's judging and its DPO training, i.e. how
model t was made (that judging was done by model t-1). Plots are drawn with matplotlib's Agg
backend, so no display is needed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from .records import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

WIN_RATE_FIELDS = {
    "win_rate": ("win_rate", None), "win_rate_low": ("win_rate_ci", 0), "win_rate_high": ("win_rate_ci", 1),
    "lc_win_rate": ("lc_win_rate", None), "lc_win_rate_low": ("lc_win_rate_ci", 0),
    "lc_win_rate_high": ("lc_win_rate_ci", 1), "mean_chars": ("mean_chars", None),
    "mean_tokens": ("mean_tokens", None), "annotated": ("annotated", None),
}
HEALTH_FIELDS = {
    "judge_parse_failure_rate": ("judge", "parse_failure_rate"),
    "free_text_parse_rate": ("judge", "free_text_parse_rate"),
    "score_mean": ("judge", "score_mean"), "score_stdev": ("judge", "score_stdev"),
    "tie_share": ("judge", "tie_share"),
    "meta_parse_failure_rate": ("meta_judge", "parse_failure_rate"),
    "position_bias": ("meta_judge", "position_bias"), "score_bias": ("meta_judge", "score_bias"),
    "order_consistency": ("meta_judge", "order_consistency"),
    "elo_spread": ("elo_spread", "mean"),
    "actor_pairs": ("pairs", "actor_pairs"), "judge_pairs": ("pairs", "judge_pairs"),
}
DPO_FIELDS = ("loss", "reward_accuracy", "reward_margin")


def _get(data: dict | None, *keys):
    for key in keys:
        if data is None:
            return None
        data = data[key] if isinstance(key, int) else data.get(key)
    return data


def metrics_row(t: int, win_rates: dict[str, dict], agreement: dict, health: dict | None) -> dict:
    """One model's row: per-set win rates and lengths, judge agreement, iteration health."""
    row: dict = {"iteration": t, "model": f"results/iter{t}/model"}
    for name, summary in win_rates.items():
        for field, (key, index) in WIN_RATE_FIELDS.items():
            row[f"{name}_{field}"] = _get(summary, key) if index is None else _get(summary, key, index)
    human, actor = agreement["human_labels"], agreement.get("evaluator_on_actor_pairs")
    row.update(human_agreement=human["agreement"], human_agreement_without_ties=human["agreement_without_ties"],
               human_spearman=human["spearman"], human_judgment_parse_rate=human["judgment_parse_rate"],
               actor_pair_agreement=_get(actor, "agreement"),
               actor_pair_agreement_without_ties=_get(actor, "agreement_without_ties"))
    for field, keys in HEALTH_FIELDS.items():
        row[field] = _get(health, *keys)
    for field in DPO_FIELDS:
        row[f"dpo_final_{field}"] = _get(health, "dpo", "final", field)
    return row


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{round(value, 4)}"
    return str(value)


def write_tsv(path: str, rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    with atomic_path(path) as tmp:
        lines = ["\t".join(columns)] + ["\t".join(_cell(r.get(c)) for c in columns) for r in rows]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return columns


def collect_metrics(
    models: Sequence[int],
    sets: Sequence[str],
    win_rate_paths: Sequence[str],
    agreement_paths: Sequence[str],
    health_paths: Sequence[str],
    tsv_out: str,
    json_out: str,
) -> dict:
    """One row per model. ``win_rate_paths`` run model-major, set-minor; ``agreement_paths``
    follow ``models``; ``health_paths`` are those of models 1.. (the seed has no iteration)."""
    if len(win_rate_paths) != len(models) * len(sets) or len(agreement_paths) != len(models):
        raise ValueError(f"collect_metrics: {len(win_rate_paths)} win-rate and {len(agreement_paths)} agreement "
                         f"files for {len(models)} models and {len(sets)} sets")
    health_by_model = dict(zip([t for t in models if t >= 1], health_paths))
    rows, details = [], {}
    for index, t in enumerate(models):
        win_rates = {s: read_json(win_rate_paths[index * len(sets) + k]) for k, s in enumerate(sets)}
        health = read_json(health_by_model[t]) if t in health_by_model else None
        rows.append(metrics_row(t, win_rates, read_json(agreement_paths[index]), health))
        details[str(t)] = {"win_rates": win_rates,
                           "score_histogram": _get(health, "judge", "score_histogram"),
                           "dpo_curves": _get(health, "dpo", "curves")}
    columns = write_tsv(tsv_out, rows)
    metrics = {"columns": columns, "rows": rows, "sets": list(sets), "details": details}
    write_json(json_out, metrics)
    log.info("%d models x %d columns", len(rows), len(columns))
    return metrics


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes, color="grey")


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["iteration"], r.get(key)) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _iteration_axis(ax, rows: list[dict]) -> None:
    ax.set_xticks([r["iteration"] for r in rows])
    ax.set_xlabel("iteration (0 = seed)")


def _save(fig, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)


def plot_win_rates(rows: list[dict], sets: Sequence[str], path: str) -> None:
    """Win rate and LC win rate with their 95% intervals, one panel per evaluation set."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5.5 * max(len(sets), 1), 4), squeeze=False)
    for ax, name in zip(axes[0], sets or [None]):
        drawn = False
        for offset, (key, label) in zip((-0.06, 0.06), (("win_rate", "win rate"), ("lc_win_rate", "LC win rate"))):
            points = [(r["iteration"], r[f"{name}_{key}"], r[f"{name}_{key}_low"], r[f"{name}_{key}_high"])
                      for r in rows if name and r.get(f"{name}_{key}") is not None]
            if not points:
                continue
            x = [p[0] + offset for p in points]
            y = [p[1] for p in points]
            err = [[max(p[1] - p[2], 0) for p in points], [max(p[3] - p[1], 0) for p in points]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=label)
            drawn = True
        ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% against the reference")
        ax.set_title(f"{name}" if name else "no evaluation set")
        _iteration_axis(ax, rows)
        if drawn:
            ax.legend()
        else:
            _no_data(ax, "annotations")
    _save(fig, path)


def plot_lengths(rows: list[dict], sets: Sequence[str], path: str) -> None:
    """Mean output length in characters and tokens per iteration, one line per set."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (unit, label) in zip(axes, (("mean_chars", "characters"), ("mean_tokens", "tokens"))):
        for name in sets:
            x, y = _series(rows, f"{name}_{unit}")
            if x:
                ax.plot(x, y, marker="o", label=name)
        ax.set_ylabel(f"mean output length ({label})")
        _iteration_axis(ax, rows)
        if ax.lines:
            ax.legend()
        else:
            _no_data(ax, "outputs")
    _save(fig, path)


def plot_score_distributions(details: dict, path: str) -> None:
    """Share of judgments per score (and unparsed) in each iteration's judging."""
    plt = _pyplot()
    hists = {t: d["score_histogram"] for t, d in sorted(details.items(), key=lambda kv: int(kv[0]))
             if d.get("score_histogram")}
    fig, ax = plt.subplots(figsize=(8, 4))
    if not hists:
        _no_data(ax, "judgments")
    else:
        bins = list(next(iter(hists.values())))
        width = 0.8 / len(hists)
        for k, (t, hist) in enumerate(hists.items()):
            total = sum(hist.values()) or 1
            ax.bar([i + (k - (len(hists) - 1) / 2) * width for i in range(len(bins))],
                   [hist.get(b, 0) / total for b in bins], width=width, label=f"iteration {t}")
        ax.set_xticks(range(len(bins)))
        ax.set_xticklabels(bins)
        ax.set_xlabel("judge score")
        ax.set_ylabel("share of judgments")
        ax.legend()
    _save(fig, path)


def plot_judge_biases(rows: list[dict], path: str) -> None:
    """Meta-judge biases, tie share and parse-failure rates per iteration (shares in [0, 1])."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("position_bias", "meta-judge position bias (first wins)"),
                       ("score_bias", "meta-judge score bias (higher score wins)"),
                       ("order_consistency", "meta-judge order consistency"),
                       ("tie_share", "prompts whose responses all tie"),
                       ("judge_parse_failure_rate", "judge parse failures"),
                       ("meta_parse_failure_rate", "meta-judge parse failures")):
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, marker="o", label=label)
    drawn = bool(ax.lines)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("share")
    _iteration_axis(ax, rows)
    if drawn:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "judge statistics")
    _save(fig, path)


def plot_judge_agreement(rows: list[dict], path: str) -> None:
    """The model as judge against the team's labels; the evaluator on the actor pairs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label in (("human_agreement", "agreement with labels"),
                       ("human_agreement_without_ties", "agreement with labels, ties left out"),
                       ("human_spearman", "Spearman (score difference vs label)"),
                       ("actor_pair_agreement", "evaluator agrees with the actor pairs")):
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, marker="o", label=label)
    drawn = bool(ax.lines)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_ylim(-1.02, 1.02)
    _iteration_axis(ax, rows)
    if drawn:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "agreement")
    _save(fig, path)


def plot_dpo_curves(details: dict, path: str) -> None:
    """DPO loss, reward accuracy and reward margin per optimiser step, one line per iteration."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    curves = {t: d["dpo_curves"] for t, d in sorted(details.items(), key=lambda kv: int(kv[0]))
              if d.get("dpo_curves")}
    for ax, (key, label) in zip(axes, (("loss", "DPO loss"), ("reward_accuracy", "reward accuracy"),
                                       ("reward_margin", "reward margin"))):
        for t, c in curves.items():
            points = [(s, v) for s, v in zip(c["step"], c[key]) if v is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=f"iteration {t}")
        ax.set_xlabel("optimiser step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend()
        else:
            _no_data(ax, "training steps")
    _save(fig, path)


def plot_metrics(metrics_path: str, outputs: dict[str, str]) -> None:
    """Every plot of the report from results/metrics.json; ``outputs`` maps plot name to path."""
    metrics = read_json(metrics_path)
    rows, sets, details = metrics["rows"], metrics["sets"], metrics["details"]
    plot_win_rates(rows, sets, outputs["win_rate"])
    plot_lengths(rows, sets, outputs["length"])
    plot_score_distributions(details, outputs["score_distribution"])
    plot_judge_biases(rows, outputs["judge_bias"])
    plot_judge_agreement(rows, outputs["judge_agreement"])
    plot_dpo_curves(details, outputs["dpo_curves"])
    log.info("plots: %s", ", ".join(outputs.values()))
