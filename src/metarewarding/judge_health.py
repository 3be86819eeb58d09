"""Stage: the health of one iteration's judge and meta-judge, from the iteration's own files.

Reads what iteration t left (judgments, meta-judgments when the judge was trained, the judge
pairs with their Elo scores, the pair and DPO stats) and summarises how the judge behaved:
parse failures, the score distribution, how often a prompt's responses all tie (no actor pair),
the meta-judge's position bias, score bias and order consistency, the Elo spread, pair counts
with drop reasons, and the DPO training curves. No model is loaded.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, defaultdict

from .metrics import order_consistency, position_bias, score_bias, score_histogram, tie_share
from .records import read_json, read_jsonl, write_json

log = logging.getLogger(__name__)

DPO_KEYS = {"loss": "loss", "reward_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def judgment_health(judgments: list[dict], low: float, high: float) -> dict:
    """Parse failures, score histogram, mean and spread, and the share of prompts whose
    responses all received the same reward."""
    scores = [j["score"] for j in judgments]
    valid = [s for s in scores if s is not None]
    rewards: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for j in judgments:
        rewards[j["prompt_id"]][j["response_id"]].append(j["score"])
    groups = [[statistics.fmean(v) if (v := [s for s in ss if s is not None]) else None
               for ss in by_response.values()] for by_response in rewards.values()]
    free = [j for j in judgments if "free_score" in j]
    return {
        "judgments": len(judgments),
        "parse_failure_rate": _share(len(scores) - len(valid), len(scores)),
        "parse_failures": dict(Counter(j.get("parse_error") for j in judgments if j.get("parse_error"))),
        "free_text_parse_rate": _share(sum(j["free_score"] is not None for j in free), len(free)),
        "score_histogram": score_histogram(scores, int(low), int(high)),
        "score_mean": round(statistics.fmean(valid), 4) if valid else None,
        "score_stdev": round(statistics.pstdev(valid), 4) if valid else None,
        "tie_share": tie_share(groups),
        "prompts": len(groups),
    }


def meta_judgment_health(metas: list[dict]) -> dict:
    """Parse failures, position bias, score bias and order consistency of the meta-judge."""
    results = [m["outcome"] for m in metas]
    scored = [(m["first_score"], m["second_score"], m["outcome"]) for m in metas]
    by_order = {(m["first_id"], m["second_id"]): m["outcome"] for m in metas}
    both = [(r, by_order[(b, a)]) for (a, b), r in by_order.items() if a < b and (b, a) in by_order]
    return {
        "comparisons": len(metas),
        "parse_failure_rate": _share(sum(r == 0 for r in results), len(results)),
        "position_bias": position_bias(results),
        "score_bias": score_bias(scored),
        "order_consistency": order_consistency(both),
        "ordered_pairs_with_both_orders": len(both),
    }


def elo_spread(judge_pairs: list[dict]) -> dict:
    """Spread (max - min) of the Elo scores of each meta-judged response's judgments."""
    spreads = [max(e.values()) - min(e.values()) for p in judge_pairs if (e := p["meta"].get("elo"))]
    return {"responses": len(spreads), "mean": round(statistics.fmean(spreads), 6) if spreads else None,
            "max": round(max(spreads), 6) if spreads else None}


def dpo_curves(train_stats: dict) -> dict:
    """Per-step loss, reward accuracy and reward margin, and their last values."""
    steps = train_stats.get("steps", [])
    curves = {"step": [s.get("step", i + 1) for i, s in enumerate(steps)]}
    for name, key in DPO_KEYS.items():
        curves[name] = [s.get(key) for s in steps]
    final = {name: next((v for v in reversed(curves[name]) if v is not None), None) for name in DPO_KEYS}
    return {"curves": curves, "final": final, "pairs": train_stats.get("pairs")}


def pair_counts(build_stats: dict) -> dict:
    """Pairs kept and why prompts or responses were dropped."""
    return {key: build_stats.get(key) for key in
            ("prompts", "actor_pairs", "actor_outcomes", "judge_pairs", "judge_outcomes", "train_pairs")}


def evaluate_judge_health(
    judgments_path: str,
    meta_judgments_path: str | None,
    judge_pairs_path: str,
    build_stats_path: str,
    train_stats_path: str,
    score_range: tuple[float, float],
    iteration: int,
    out_path: str,
) -> dict:
    judgments = read_jsonl(judgments_path, required=("judgment_id", "response_id", "prompt_id", "score"),
                           id_field="judgment_id")
    metas = None
    if meta_judgments_path is not None:
        metas = read_jsonl(meta_judgments_path, required=("first_id", "second_id", "first_score", "second_score",
                                                          "outcome"), allow_empty=True)
    health = {
        "iteration": iteration,
        "judge": judgment_health(judgments, *score_range),
        "meta_judge": meta_judgment_health(metas) if metas is not None else None,
        "elo_spread": elo_spread(read_jsonl(judge_pairs_path, required=("meta",), allow_empty=True)),
        "pairs": pair_counts(read_json(build_stats_path)),
        "dpo": dpo_curves(read_json(train_stats_path)),
    }
    write_json(out_path, health)
    log.info("judge parse failures %s, tie share %s", health["judge"]["parse_failure_rate"],
             health["judge"]["tie_share"])
    return health
