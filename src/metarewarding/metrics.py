"""Evaluation metrics: win rates, bootstrap intervals, length control, judge quality.

Everything here is a pure function over plain Python sequences (numpy only, no
scipy), so the same code scores AlpacaEval-style pairwise annotations, judge
agreement with labelled pairs, and the health of the LLM-as-a-Judge /
meta-judge during Meta-Rewarding training (Wu et al. 2024).

Conventions
-----------
* A *preference* is a float in [0, 1]: 1.0 the model output won against the
  reference, 0.5 a tie, 0.0 the reference won.
* Win rates are percentages in [0, 100].
* Lengths are counted in characters.
* Meta-judge comparison results are ints: +1 the judgment shown first won,
  -1 the judgment shown second won, 0 the verdict could not be parsed.
* Functions that summarise a share return ``None`` when nothing is eligible
  (no parsed items), instead of inventing a 0 or raising.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Agreement",
    "LengthControlled",
    "agreement",
    "bootstrap_interval",
    "judge_preference_from_scores",
    "length_controlled_win_rate",
    "order_consistency",
    "position_bias",
    "preference_from_orders",
    "score_bias",
    "score_histogram",
    "spearman",
    "tie_share",
    "win_rate",
]

_WINNER_TO_PREFERENCE: dict[str, float] = {"model": 1.0, "tie": 0.5, "reference": 0.0}
_PAIR_LABELS: frozenset[str] = frozenset({"A", "B", "tie"})
_RESULTS: frozenset[int] = frozenset({-1, 0, 1})


# --------------------------------------------------------------------------- #
# Result types
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class LengthControlled:
    """Length-controlled win rate and the fitted logistic coefficients.

    win_rate: 100 * sigmoid(theta), percent, the predicted preference at zero
        length difference.
    theta: intercept of the logit (model quality at equal length).
    phi: coefficient of tanh(delta / sd(delta)) (the judge's length effect).
    """

    win_rate: float
    theta: float
    phi: float


@dataclass(frozen=True)
class Agreement:
    """Agreement of a judge with labelled pairs.

    agreement: share in [0, 1] of items where judge == label (ties included,
        unparsed judge verdicts count as disagreement); None if n == 0.
    agreement_without_ties: same share restricted to items where neither the
        label nor the judge verdict is "tie" (unparsed verdicts stay in and
        count as disagreement); None if n_without_ties == 0.
    n: number of items.
    n_without_ties: number of items in the restricted denominator.
    n_unparsed: number of items whose judge verdict is None.
    """

    agreement: float | None
    agreement_without_ties: float | None
    n: int
    n_without_ties: int
    n_unparsed: int


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _is_valid_score(value: float | None) -> bool:
    """True when ``value`` is a real, finite number (not None, not NaN/inf)."""
    return value is not None and math.isfinite(value)


def _preference_array(prefs: Sequence[float], name: str = "prefs") -> np.ndarray:
    """Validate preferences (non-empty, finite, each in [0, 1]) as a float array."""
    arr = np.asarray(prefs, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of floats, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; expected at least one preference in [0, 1]")
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{first}] = {arr[first]!r} is not a preference; expected a value in [0, 1]"
        )
    return arr


def _check_result(result: int) -> int:
    """Validate a meta-judge comparison result (+1, -1 or 0 for unparsed)."""
    if result not in _RESULTS:
        raise ValueError(
            f"comparison result {result!r} is invalid; expected +1 (first won), "
            "-1 (second won) or 0 (unparsed)"
        )
    return int(result)


def _sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    """Numerically stable logistic function 1 / (1 + exp(-z))."""
    return np.exp(-np.logaddexp(0.0, -z))


# --------------------------------------------------------------------------- #
# Pairwise win rates
# --------------------------------------------------------------------------- #
def preference_from_orders(first_order: str | None, second_order: str | None) -> float | None:
    """Combine a pairwise evaluator's verdicts on both presentation orders.

    Each order names the winner as "model", "reference" or "tie", or None if
    the verdict could not be parsed. Winners map to model -> 1.0, tie -> 0.5,
    reference -> 0.0 and the parsed orders are averaged:

        pref = mean(map(w) for w in (first_order, second_order) if w is not None)

    Averaging both orders cancels the evaluator's position bias. Returns None
    if neither order parsed.
    """
    values: list[float] = []
    for label, winner in (("first_order", first_order), ("second_order", second_order)):
        if winner is None:
            continue
        if winner not in _WINNER_TO_PREFERENCE:
            raise ValueError(
                f"{label} = {winner!r} is not a winner; expected 'model', 'reference', "
                "'tie' or None"
            )
        values.append(_WINNER_TO_PREFERENCE[winner])
    if not values:
        return None
    return sum(values) / len(values)


def win_rate(prefs: Sequence[float]) -> float:
    """Win rate of the model against the reference, in percent.

    win_rate = 100 * mean(prefs), with prefs in [0, 1]; a tie (0.5) counts as
    half a win, as in AlpacaEval.
    """
    return float(100.0 * _preference_array(prefs).mean())


def bootstrap_interval(
    prefs: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = win_rate,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` over items.

    Items (the first axis of ``prefs``) are resampled with replacement
    ``n_boot`` times using ``numpy.random.default_rng(seed)``; the interval is
    the (alpha/2, 1 - alpha/2) quantiles of the resampled statistic, with
    alpha = 1 - level. Same inputs and seed give the same interval.

    ``prefs`` may be 2-D (items x columns) to bootstrap statistics of several
    aligned per-item quantities, e.g. stack preferences with lengths and pass
    a statistic that calls :func:`length_controlled_win_rate` on the columns.
    The interval is in the units of ``statistic`` (percent for win_rate).
    """
    data = np.asarray(prefs, dtype=float)
    if data.ndim not in (1, 2) or data.shape[0] == 0:
        raise ValueError(
            f"prefs must be a non-empty 1-D or 2-D (items x columns) array, got shape {data.shape}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot = {n_boot} is invalid; expected a positive number of resamples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level = {level} is invalid; expected a coverage strictly in (0, 1)")
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    indices = rng.integers(0, n, size=(n_boot, n))
    stats = np.array([float(statistic(data[idx])) for idx in indices])
    alpha = 1.0 - level
    low, high = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def length_controlled_win_rate(
    prefs: Sequence[float],
    model_lengths: Sequence[float],
    reference_lengths: Sequence[float],
    l2: float = 0.1,
    l2_theta: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LengthControlled:
    """Length-controlled win rate of one model against one baseline (AlpacaEval 2).

    Model of the judge's preference for item i:

        delta_i = model_len_i - reference_len_i                  (characters)
        x_i     = tanh(delta_i / sd(delta))   (sd: population std over items;
                                               x_i = 0 for all i if sd == 0)
        logit p_i = theta + phi * x_i

    theta and phi maximise the penalised soft-label log-likelihood

        sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]
            - (l2 / 2) * phi**2 - (l2_theta / 2) * theta**2,

    with y_i = prefs[i] in [0, 1] (ties are y = 0.5), by Newton's method
    (IRLS) with step halving. The penalty is on the summed likelihood, so its
    influence shrinks as the number of items grows. The L2 on phi mirrors
    AlpacaEval's regularisation of the length coefficient and keeps phi finite
    when preference is perfectly separated by length. The tiny L2 on theta
    (default 1e-4) only matters when all preferences are 1 (or all 0): the
    unpenalised optimum is then theta = +inf (-inf); with it theta stays
    finite (about +-11 for 50 items) and the LC win rate just below 100
    (above 0).

    The LC win rate is the prediction at zero length difference:

        lc_win_rate = 100 * sigmoid(theta)   (percent)

    AlpacaEval 2 additionally has a per-instruction difficulty term (shared
    across all models on the leaderboard); with a single model against a
    single baseline it is not identifiable, so it is omitted here.
    """
    y = _preference_array(prefs)
    model_len = np.asarray(model_lengths, dtype=float)
    reference_len = np.asarray(reference_lengths, dtype=float)
    if model_len.shape != y.shape or reference_len.shape != y.shape:
        raise ValueError(
            f"prefs, model_lengths and reference_lengths must be aligned 1-D sequences; "
            f"got lengths {y.shape[0]}, {model_len.size}, {reference_len.size}"
        )
    if not (np.isfinite(model_len).all() and np.isfinite(reference_len).all()):
        raise ValueError("model_lengths and reference_lengths must be finite character counts")
    if l2 < 0 or l2_theta < 0:
        raise ValueError(f"l2 = {l2}, l2_theta = {l2_theta}; expected non-negative penalties")

    delta = model_len - reference_len
    sd = float(delta.std())
    x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.array([l2_theta, l2])

    def objective(w: np.ndarray) -> float:
        z = design @ w
        # log p = -log(1 + e^-z); log(1 - p) = -log(1 + e^z)
        loglik = -(y * np.logaddexp(0.0, -z) + (1.0 - y) * np.logaddexp(0.0, z)).sum()
        return float(loglik - 0.5 * (penalty * w * w).sum())

    w = np.zeros(2)
    current = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(design @ w)
        gradient = design.T @ (y - p) - penalty * w
        hessian = (design * (p * (1.0 - p))[:, None]).T @ design + np.diag(penalty)
        # Tiny ridge keeps the solve well-posed when both penalties are zero.
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while True:
            candidate = w + scale * step
            value = objective(candidate)
            if value >= current - 1e-12 or scale < 1e-8:
                break
            scale /= 2.0
        w, current = candidate, value
        if np.max(np.abs(scale * step)) < tol:
            break
    else:
        raise RuntimeError(
            f"length-controlled fit did not converge in {max_iter} Newton steps "
            f"(theta = {w[0]}, phi = {w[1]}); expected convergence, try a larger l2"
        )
    theta, phi = float(w[0]), float(w[1])
    return LengthControlled(win_rate=float(100.0 * _sigmoid(theta)), theta=theta, phi=phi)


# --------------------------------------------------------------------------- #
# Judge agreement with labelled pairs
# --------------------------------------------------------------------------- #
def judge_preference_from_scores(score_a: float | None, score_b: float | None) -> str | None:
    """Turn two pointwise judge scores into a pairwise verdict.

    "A" if score_a > score_b, "B" if score_b > score_a, "tie" if equal, None
    if either score is missing (None or NaN).
    """
    if not (_is_valid_score(score_a) and _is_valid_score(score_b)):
        return None
    if score_a > score_b:  # type: ignore[operator]
        return "A"
    if score_b > score_a:  # type: ignore[operator]
        return "B"
    return "tie"


def agreement(judge_prefs: Sequence[str | None], labels: Sequence[str]) -> Agreement:
    """Agreement of judge verdicts with gold labels on pairs ("A", "B" or "tie").

    agreement              = #(judge == label) / n
    agreement_without_ties = #(judge == label) / #(label != tie and judge != tie)
                             over that restricted set.

    An unparsed verdict (None) always counts as a disagreement, and since it
    is not a "tie" it stays in the without-ties denominator; n_unparsed
    reports how many there were.
    """
    if len(judge_prefs) != len(labels):
        raise ValueError(
            f"judge_prefs has {len(judge_prefs)} items but labels has {len(labels)}; "
            "expected aligned sequences"
        )
    for i, label in enumerate(labels):
        if label not in _PAIR_LABELS:
            raise ValueError(f"labels[{i}] = {label!r}; expected 'A', 'B' or 'tie'")
    for i, verdict in enumerate(judge_prefs):
        if verdict is not None and verdict not in _PAIR_LABELS:
            raise ValueError(f"judge_prefs[{i}] = {verdict!r}; expected 'A', 'B', 'tie' or None")

    n = len(labels)
    n_unparsed = sum(verdict is None for verdict in judge_prefs)
    matches = sum(verdict == label for verdict, label in zip(judge_prefs, labels))
    restricted = [
        (verdict, label)
        for verdict, label in zip(judge_prefs, labels)
        if label != "tie" and verdict != "tie"
    ]
    restricted_matches = sum(verdict == label for verdict, label in restricted)
    return Agreement(
        agreement=matches / n if n else None,
        agreement_without_ties=restricted_matches / len(restricted) if restricted else None,
        n=n,
        n_without_ties=len(restricted),
        n_unparsed=n_unparsed,
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=float)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        # Positions start..end (0-based) hold ranks start+1..end+1; average them.
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation in [-1, 1], with average ranks for ties.

    rho = Pearson correlation of rank(x) and rank(y). Returns None when there
    are fewer than 2 items or either side is constant (rho undefined).
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(
            f"x and y must be aligned 1-D sequences; got shapes {xa.shape} and {ya.shape}"
        )
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must contain finite numbers only (drop missing values first)")
    if xa.size < 2:
        return None
    rx = _average_ranks(xa) - (xa.size + 1) / 2.0
    ry = _average_ranks(ya) - (ya.size + 1) / 2.0
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if denom == 0.0:
        return None
    return float((rx * ry).sum() / denom)


# --------------------------------------------------------------------------- #
# Judge / meta-judge health
# --------------------------------------------------------------------------- #
def score_histogram(scores: Sequence[float | None], low: int, high: int) -> dict[str, int]:
    """Count judge scores per integer bin on a [low, high] scale.

    Each valid score is rounded to the nearest integer (halves round up) and
    counted under key str(k) for k = low..high (all keys present, possibly 0);
    None and NaN count under "unparsed". A score that rounds outside
    [low, high] raises, as it means the parser let an off-scale score through.
    """
    if low > high:
        raise ValueError(f"low = {low} > high = {high}; expected low <= high")
    counts: dict[str, int] = {str(k): 0 for k in range(low, high + 1)}
    counts["unparsed"] = 0
    for i, score in enumerate(scores):
        if not _is_valid_score(score):
            counts["unparsed"] += 1
            continue
        binned = math.floor(score + 0.5)  # type: ignore[operator]
        if not low <= binned <= high:
            raise ValueError(f"scores[{i}] = {score!r} is off the scale; expected [{low}, {high}]")
        counts[str(binned)] += 1
    return counts


def tie_share(groups: Sequence[Sequence[float | None]]) -> float | None:
    """Share of prompts whose responses all received the same reward.

    Only prompts with >= 2 valid (non-None, non-NaN) rewards are eligible;
    share = #(eligible prompts with all valid rewards equal) / #eligible.
    Such prompts yield no preference pair for DPO. None if none is eligible.
    """
    eligible = 0
    tied = 0
    for rewards in groups:
        valid = [r for r in rewards if _is_valid_score(r)]
        if len(valid) < 2:
            continue
        eligible += 1
        tied += all(r == valid[0] for r in valid)
    return tied / eligible if eligible else None


def _result_of(item: int | tuple[float | None, float | None, int]) -> int:
    """Result of a comparison given as a bare int or a (first, second, result) tuple."""
    if isinstance(item, tuple):
        if len(item) != 3:
            raise ValueError(
                f"comparison {item!r} is malformed; expected (first_score, second_score, result)"
            )
        return _check_result(item[2])
    return _check_result(item)


def position_bias(
    results: Sequence[int] | Sequence[tuple[float | None, float | None, int]],
) -> float | None:
    """Share of parsed meta-judge comparisons won by the judgment shown first.

    share = #(result == +1) / #(result != 0). 0.5 means no position bias.
    Accepts bare results or (first_score, second_score, result) tuples.
    None if nothing parsed.
    """
    parsed = [r for r in (_result_of(item) for item in results) if r != 0]
    if not parsed:
        return None
    return sum(r == 1 for r in parsed) / len(parsed)


def score_bias(
    comparisons: Sequence[tuple[float | None, float | None, int]],
) -> float | None:
    """Share of meta-judge comparisons won by the judgment giving the higher score.

    Eligible: result parsed (!= 0) and both judgments have valid, different
    scores. share = #(winner has the higher score) / #eligible, where the
    winner is the first judgment for result +1 and the second for -1.
    0.5 means the meta-judge ignores the score. None if none is eligible.
    """
    eligible = 0
    higher_won = 0
    for i, item in enumerate(comparisons):
        if len(item) != 3:
            raise ValueError(
                f"comparisons[{i}] = {item!r}; expected (first_score, second_score, result)"
            )
        first, second, result = item[0], item[1], _check_result(item[2])
        if result == 0 or not (_is_valid_score(first) and _is_valid_score(second)):
            continue
        if first == second:
            continue
        eligible += 1
        first_is_higher = first > second  # type: ignore[operator]
        higher_won += (result == 1) == first_is_higher
    return higher_won / eligible if eligible else None


def order_consistency(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Share of judgment pairs on which the meta-judge agrees with itself across orders.

    Each pair is (result of order (m, n), result of order (n, m)). It is
    consistent when both parsed and name the same judgment, i.e.
    r1 == -r2 and r1 != 0. share = #consistent / #(both orders parsed);
    None if no pair has both orders parsed.
    """
    eligible = 0
    consistent = 0
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{i}] = {pair!r}; expected (result_mn, result_nm)")
        r1, r2 = _check_result(pair[0]), _check_result(pair[1])
        if r1 == 0 or r2 == 0:
            continue
        eligible += 1
        consistent += r1 == -r2
    return consistent / eligible if eligible else None
