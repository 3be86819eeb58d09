"""Stage: turn judgments into actor pairs and meta-judgments into judge pairs.

Actor pairs: per prompt, a response's reward is the mean of its valid judgment scores, and the
length-controlled rule of ``selection.select_actor_pair`` picks chosen and rejected. Judge
pairs: per meta-judged response, position-weighted Bradley-Terry Elo ranks its judgments and
the highest- and lowest-rated become chosen and rejected, with the judge prompt as the DPO
prompt. Both sets are written in TRL's conversational preference format with a ``meta`` object
that traces each pair to its ids, scores and the reason it was kept; their union, shuffled with
the seed, is the training set.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from collections import Counter, defaultdict

from .elo import Outcome, count_position_wins, elo_scores
from .records import read_jsonl, write_json, write_jsonl
from .selection import Candidate, RatedJudgment, Selected, select_actor_pair, select_judge_pair
from .templates import JUDGE_FIELDS, judge_prompt, load_template

log = logging.getLogger(__name__)


class NoPairsError(RuntimeError):
    """An iteration produced no training pairs; the message carries the stats that explain it."""


def rewards(judgments: list[dict]) -> dict[str, float | None]:
    """Mean of each response's valid judgment scores (None when none parsed)."""
    scores = defaultdict(list)
    for j in judgments:
        scores[j["response_id"]].append(j["score"])
    return {rid: statistics.fmean(v) if (v := [s for s in ss if s is not None]) else None
            for rid, ss in scores.items()}


def preference_record(prompt: list[dict], chosen: str, rejected: str, meta: dict) -> dict:
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "meta": meta,
    }


def actor_pairs(responses: list[dict], judgments: list[dict], settings: dict) -> tuple[list[dict], Counter]:
    reward = rewards(judgments)
    by_prompt = defaultdict(list)
    for r in responses:
        by_prompt[r["prompt_id"]].append(r)
    pairs, reasons = [], Counter()
    for prompt_id, group in by_prompt.items():
        candidates = [Candidate(r["response_id"], reward.get(r["response_id"]), len(r["response"])) for r in group]
        result = select_actor_pair(candidates, settings["rho"], settings["max_chosen_chars"])
        reasons[result.reason] += 1
        if isinstance(result, Selected):
            texts = {r["response_id"]: r for r in group}
            chosen, rejected = texts[result.chosen], texts[result.rejected]
            pairs.append(preference_record(
                [{"role": "user", "content": chosen["prompt"]}], chosen["response"], rejected["response"],
                {"kind": "actor", "pair_id": f"{prompt_id}-actor", "prompt_id": prompt_id,
                 "chosen_id": result.chosen, "rejected_id": result.rejected,
                 "chosen_reward": reward[result.chosen], "rejected_reward": reward[result.rejected],
                 "chosen_chars": len(chosen["response"]), "rejected_chars": len(rejected["response"]),
                 "rho": settings["rho"], "reason": result.reason}))
    return pairs, reasons


def judge_pairs(
    responses: list[dict], judgments: list[dict], meta_judgments: list[dict], template: str,
    settings: dict, elo_l2: float,
) -> tuple[list[dict], Counter, dict]:
    outcomes = defaultdict(list)
    for m in meta_judgments:
        outcomes[m["response_id"]].append(Outcome(m["first_id"], m["second_id"], m["outcome"]))
    totals = count_position_wins([o for os in outcomes.values() for o in os])
    by_id = {j["judgment_id"]: j for j in judgments}
    response_by_id = {r["response_id"]: r for r in responses}
    pairs, reasons, sources = [], Counter(), Counter()
    for response_id, outs in sorted(outcomes.items()):
        ids = sorted({o.first for o in outs} | {o.second for o in outs})
        elo, weights = elo_scores(ids, outs, fallback=totals, l2=elo_l2)
        rated = [RatedJudgment(i, by_id[i]["judgment"], elo[i]) for i in ids]
        result = select_judge_pair(rated, settings["judge_max_chosen_chars"])
        reasons[result.reason] += 1
        sources[weights.source] += 1
        if isinstance(result, Selected):
            r = response_by_id[response_id]
            prompt = judge_prompt(template, r["prompt"], r["response"])
            chosen, rejected = by_id[result.chosen], by_id[result.rejected]
            pairs.append(preference_record(
                list(prompt.messages), chosen["judgment"], rejected["judgment"],
                {"kind": "judge", "pair_id": f"{response_id}-judge", "prompt_id": r["prompt_id"],
                 "response_id": response_id, "chosen_id": result.chosen, "rejected_id": result.rejected,
                 "chosen_elo": round(elo[result.chosen], 6), "rejected_elo": round(elo[result.rejected], 6),
                 "chosen_score": chosen["score"], "rejected_score": rejected["score"],
                 "elo": {k: round(v, 6) for k, v in elo.items()},
                 "position_weights": {"w1": weights.w1, "w2": weights.w2, "omega1": weights.omega1,
                                      "omega2": weights.omega2, "source": weights.source},
                 "reason": result.reason}))
    return pairs, reasons, {"w1": totals[0], "w2": totals[1], "weights_from": dict(sources)}


def build_pairs(
    responses_path: str,
    judgments_path: str,
    meta_judgments_path: str | None,
    judge_template_path: str,
    settings: dict,
    elo_l2: float,
    seed: int,
    actor_out: str,
    judge_out: str,
    train_out: str,
    stats_path: str,
) -> dict:
    start = time.perf_counter()
    responses = read_jsonl(responses_path, required=("response_id", "prompt_id", "prompt", "response"),
                           id_field="response_id")
    judgments = read_jsonl(judgments_path, required=("judgment_id", "response_id", "score", "judgment"),
                           id_field="judgment_id")
    actor, actor_reasons = actor_pairs(responses, judgments, settings)
    judge, judge_reasons, totals = [], Counter(), None
    if meta_judgments_path is not None:
        template = load_template(judge_template_path, JUDGE_FIELDS)
        metas = read_jsonl(meta_judgments_path, required=("response_id", "first_id", "second_id", "outcome"),
                           allow_empty=True)
        judge, judge_reasons, totals = judge_pairs(responses, judgments, metas, template, settings, elo_l2)
    train = actor + judge
    random.Random(seed).shuffle(train)
    stats = {
        "stage": "build_pairs",
        "prompts": len({r["prompt_id"] for r in responses}),
        "actor_pairs": len(actor),
        "actor_outcomes": dict(actor_reasons),
        "judge_training": meta_judgments_path is not None,
        "judge_pairs": len(judge),
        "judge_outcomes": dict(judge_reasons),
        "position_weighting": totals,
        "train_pairs": len(train),
        "settings": settings,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 3),
    }
    if not train:
        raise NoPairsError(
            f"no training pairs from {judgments_path}: every prompt was skipped. Stats:\n"
            + json.dumps(stats, indent=2)
        )
    write_jsonl(actor_out, actor)
    write_jsonl(judge_out, judge)
    write_jsonl(train_out, train)
    write_json(stats_path, stats)
    log.info("%d actor pairs, %d judge pairs", len(actor), len(judge))
    return stats
