"""Choose preference pairs for the actor and the judge.

Actor pairs use the paper's length-controlled rule: among responses whose
reward is near the top, take the shortest as chosen; among those near the
bottom, take the longest as rejected.  Judge pairs compare the judgments of one
response with the highest and lowest meta-judge Elo.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

# Slack for threshold comparisons, so a reward sitting exactly on a threshold
# is not dropped because the threshold itself was rounded.
_TOLERANCE = 1e-9
# Variances are compared after rounding to this many decimals.
_VARIANCE_DECIMALS = 12


@dataclass(frozen=True)
class Candidate:
    """An actor response: its id, its reward (None if unscored), its length in characters."""

    id: str
    reward: float | None
    length: int


@dataclass(frozen=True)
class Selected:
    """A kept preference pair (ids of chosen and rejected) and why it was kept."""

    chosen: str
    rejected: str
    reason: str


@dataclass(frozen=True)
class Skipped:
    """No pair was formed; ``reason`` says why."""

    reason: str


@dataclass(frozen=True)
class RatedJudgment:
    """A judgment of one response with its meta-judge Elo score."""

    id: str
    text: str
    elo: float


def _check_unique_ids(ids: Sequence[str], what: str) -> None:
    """Raise ValueError if any id repeats, since pairs are reported by id."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise ValueError(f"{what} ids must be unique, got {item_id!r} more than once")
        seen.add(item_id)


def _scored(candidates: Sequence[Candidate]) -> list[tuple[int, Candidate]]:
    """Return (input position, candidate) for every candidate with a finite reward."""
    scored = []
    for position, candidate in enumerate(candidates):
        if candidate.reward is None:
            continue
        if not math.isfinite(candidate.reward):
            raise ValueError(
                f"candidate {candidate.id!r} reward must be finite or None, got {candidate.reward}"
            )
        scored.append((position, candidate))
    return scored


def _pick_chosen(scored: list[tuple[int, Candidate]], threshold: float) -> tuple[int, Candidate]:
    """Shortest candidate with reward >= threshold; ties: higher reward, then earlier."""
    eligible = [(p, c) for p, c in scored if c.reward >= threshold - _TOLERANCE]
    return min(eligible, key=lambda pc: (pc[1].length, -pc[1].reward, pc[0]))


def _pick_rejected(scored: list[tuple[int, Candidate]], threshold: float) -> tuple[int, Candidate]:
    """Longest candidate with reward <= threshold; ties: lower reward, then earlier."""
    eligible = [(p, c) for p, c in scored if c.reward <= threshold + _TOLERANCE]
    return min(eligible, key=lambda pc: (-pc[1].length, pc[1].reward, pc[0]))


def select_actor_pair(
    candidates: Sequence[Candidate], rho: float, max_chosen_chars: int | None = None
) -> Selected | Skipped:
    """Length-controlled actor pair (paper Sec. 3.1).

    With S_max, S_min the extreme rewards, chosen is the shortest response with
    reward >= (1-rho)*S_max + rho*S_min and rejected the longest with reward
    <= rho*S_max + (1-rho)*S_min.  rho = 0 is plain best-vs-worst.
    ``max_chosen_chars`` caps the chosen response's length in characters.
    """
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    _check_unique_ids([c.id for c in candidates], "candidate")
    scored = _scored(candidates)
    if len(scored) < 2:
        return Skipped("fewer_than_2_scored")
    s_max = max(c.reward for _, c in scored)
    s_min = min(c.reward for _, c in scored)
    if s_max == s_min:
        return Skipped("all_tied")
    chosen_pos, chosen = _pick_chosen(scored, (1 - rho) * s_max + rho * s_min)
    if max_chosen_chars is not None and chosen.length > max_chosen_chars:
        return Skipped("chosen_too_long")
    rejected_pos, rejected = _pick_rejected(scored, rho * s_max + (1 - rho) * s_min)
    if chosen_pos == rejected_pos:
        return Skipped("same_response")
    if chosen.reward <= rejected.reward:
        return Skipped("chosen_not_better")
    reason = "length_controlled" if rho > 0 else "best_vs_worst"
    return Selected(chosen=chosen.id, rejected=rejected.id, reason=reason)


def score_variance(scores: Sequence[float | None]) -> float | None:
    """Population variance (divide by n) of the non-None scores; None if fewer than 2."""
    valid = [s for s in scores if s is not None]
    if len(valid) < 2:
        return None
    mean = sum(valid) / len(valid)
    return sum((s - mean) ** 2 for s in valid) / len(valid)


def select_high_variance(
    groups: Mapping[str, Sequence[float | None]], rng: random.Random
) -> str | Skipped:
    """Key (response id) whose judge scores vary most, for training the judge.

    Ties at the maximum (compared at 12 decimals) are broken with
    ``rng.choice(sorted(tied))``; the rng is not consumed when there is no tie.
    """
    variances = {key: score_variance(scores) for key, scores in groups.items()}
    rounded = {k: round(v, _VARIANCE_DECIMALS) for k, v in variances.items() if v is not None}
    if not rounded:
        return Skipped("fewer_than_2_valid_judgments")
    best = max(rounded.values())
    if best <= 0:
        return Skipped("no_variance")
    tied = sorted(key for key, value in rounded.items() if value == best)
    if len(tied) == 1:
        return tied[0]
    return rng.choice(tied)


def select_judge_pair(
    judgments: Sequence[RatedJudgment], max_chosen_chars: int | None = None
) -> Selected | Skipped:
    """Highest-Elo judgment as chosen, lowest-Elo as rejected (ties: earlier position).

    ``max_chosen_chars`` caps the chosen judgment's text length in characters.
    """
    _check_unique_ids([j.id for j in judgments], "judgment")
    if len(judgments) < 2:
        return Skipped("fewer_than_2_judgments")
    positions = range(len(judgments))
    chosen = judgments[min(positions, key=lambda i: (-judgments[i].elo, i))]
    rejected = judgments[min(positions, key=lambda i: (judgments[i].elo, i))]
    if chosen.elo - rejected.elo <= _TOLERANCE:
        return Skipped("elo_tie")
    if max_chosen_chars is not None and len(chosen.text) > max_chosen_chars:
        return Skipped("chosen_too_long")
    if chosen.text.strip() == rejected.text.strip():
        return Skipped("identical_texts")
    return Selected(chosen=chosen.id, rejected=rejected.id, reason="highest_vs_lowest_elo")
