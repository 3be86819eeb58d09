"""Elo scores for judgments from the meta-judge's pairwise verdicts (paper Sec. 3.2).

Every pair of judgments of one response is shown to the meta-judge in both
orders.  Meta-judges favour one position, so a win is weighted by how rare wins
in that position are: omega1 = w2/(w1+w2) for a first-position win and
omega2 = w1/(w1+w2) for a second-position win.  The weighted win counts feed a
Bradley-Terry model whose maximum a-posteriori scores are the Elo scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Outcome:
    """One ordered comparison: ``first`` shown as A, ``second`` as B.

    ``result`` is +1 if first wins, -1 if second wins, 0 if unparsed.
    """

    first: str
    second: str
    result: int

    def __post_init__(self) -> None:
        if self.result not in (-1, 0, 1):
            raise ValueError(f"outcome result must be -1, 0 or +1, got {self.result!r}")
        if self.first == self.second:
            raise ValueError(
                f"outcome must compare two different judgments, got {self.first!r} twice"
            )


@dataclass(frozen=True)
class PositionWeights:
    """Position-bias weights for one response.

    ``w1``/``w2`` are this response's own wins by the first/second-shown
    judgment; ``omega1``/``omega2`` are the weights actually applied, and
    ``source`` says where they came from: "response" (w1, w2), "iteration"
    (the fallback totals) or "uniform" (0.5 each).
    """

    w1: int
    w2: int
    omega1: float
    omega2: float
    source: str


def count_position_wins(outcomes: Sequence[Outcome]) -> tuple[int, int]:
    """Return (w1, w2): wins by the judgment shown first, and by the one shown second."""
    w1 = sum(1 for o in outcomes if o.result == 1)
    w2 = sum(1 for o in outcomes if o.result == -1)
    return w1, w2


def _is_degenerate(w1: int, w2: int) -> bool:
    """True when a position never won, so its opposite weight would be 0."""
    return w1 == 0 or w2 == 0


def position_weights(
    outcomes: Sequence[Outcome], fallback: tuple[int, int] | None = None
) -> PositionWeights:
    """Weights from this response's win counts, else the iteration's, else uniform.

    ``fallback`` is the whole iteration's (w1, w2) totals, used only when this
    response's counts are degenerate (w1 == 0 or w2 == 0).
    """
    w1, w2 = count_position_wins(outcomes)
    if not _is_degenerate(w1, w2):
        return PositionWeights(w1, w2, w2 / (w1 + w2), w1 / (w1 + w2), "response")
    if fallback is not None:
        f1, f2 = fallback
        if f1 < 0 or f2 < 0:
            raise ValueError(f"fallback win counts must be non-negative, got {fallback}")
        if not _is_degenerate(f1, f2):
            return PositionWeights(w1, w2, f2 / (f1 + f2), f1 / (f1 + f2), "iteration")
    return PositionWeights(w1, w2, 0.5, 0.5, "uniform")


def _index_of(ids: Sequence[str]) -> dict[str, int]:
    """Map each id to its row; raise ValueError on duplicates."""
    index: dict[str, int] = {}
    for position, item_id in enumerate(ids):
        if item_id in index:
            raise ValueError(f"judgment ids must be unique, got {item_id!r} more than once")
        index[item_id] = position
    return index


def battle_matrix(
    ids: Sequence[str], outcomes: Sequence[Outcome], weights: PositionWeights
) -> np.ndarray:
    """Weighted wins B[m, n] of judgment m over n, rows/columns ordered as ``ids``.

    B[m, n] = omega1 * [m beat n shown first] + omega2 * [m beat n shown second].
    """
    index = _index_of(ids)
    battles = np.zeros((len(ids), len(ids)))
    for outcome in outcomes:
        for item_id in (outcome.first, outcome.second):
            if item_id not in index:
                raise ValueError(
                    f"outcome names unknown judgment id {item_id!r}; expected one of {list(ids)}"
                )
        first, second = index[outcome.first], index[outcome.second]
        if outcome.result == 1:
            battles[first, second] += weights.omega1
        elif outcome.result == -1:
            battles[second, first] += weights.omega2
    return battles


def _check_battles(battles: np.ndarray, l2: float) -> None:
    """Raise ValueError unless battles is finite, non-negative, square, zero-diagonal."""
    if battles.ndim != 2 or battles.shape[0] != battles.shape[1]:
        raise ValueError(f"battles must be a square matrix, got shape {battles.shape}")
    if not np.all(np.isfinite(battles)) or np.any(battles < 0):
        raise ValueError("battles must hold finite, non-negative weighted win counts")
    if np.any(np.diag(battles) != 0):
        raise ValueError("battles must have a zero diagonal (a judgment cannot battle itself)")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 so the objective is strictly concave, got {l2}")


def _objective(battles: np.ndarray, eps: np.ndarray, l2: float) -> float:
    """Penalised log-likelihood: sum B[m,n] log sigmoid(eps_m - eps_n) - l2/2 |eps|^2."""
    diff = eps[:, None] - eps[None, :]
    return float(-np.sum(battles * np.logaddexp(0.0, -diff)) - 0.5 * l2 * eps @ eps)


def _gradient_and_hessian(
    battles: np.ndarray, eps: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and (negative-definite) Hessian of the penalised log-likelihood."""
    diff = eps[:, None] - eps[None, :]
    win_prob = 0.5 * (1.0 + np.tanh(0.5 * diff))  # sigmoid, overflow-free
    surprise = battles * (1.0 - win_prob)
    gradient = surprise.sum(axis=1) - surprise.sum(axis=0) - l2 * eps
    curvature = battles * win_prob * (1.0 - win_prob)
    curvature = curvature + curvature.T
    laplacian = np.diag(curvature.sum(axis=1)) - curvature
    return gradient, -laplacian - l2 * np.eye(len(eps))


def _line_search(
    battles: np.ndarray, eps: np.ndarray, step: np.ndarray, slope: float, l2: float
) -> np.ndarray:
    """Backtrack along ``step`` until the objective rises enough (Armijo); slope = grad . step."""
    current = _objective(battles, eps, l2)
    slack = 1e-12 * (1.0 + abs(current))  # tolerate rounding near the optimum
    t = 1.0
    while t > 1e-12:
        trial = eps + t * step
        if _objective(battles, trial, l2) >= current + 1e-4 * t * slope - slack:
            return trial
        t *= 0.5
    return eps + t * step


def bradley_terry(
    battles: np.ndarray, l2: float = 0.01, tol: float = 1e-10, max_iter: int = 100
) -> np.ndarray:
    """Bradley-Terry scores eps maximising the l2-penalised log-likelihood, mean zero.

    Newton's method with backtracking; stops once the gradient norm is below
    ``tol``.  The penalty keeps scores finite even for a clean sweep.
    """
    battles = np.asarray(battles, dtype=float)
    _check_battles(battles, l2)
    eps = np.zeros(battles.shape[0])
    if eps.size == 0:
        return eps
    for _ in range(max_iter):
        gradient, hessian = _gradient_and_hessian(battles, eps, l2)
        if np.linalg.norm(gradient) < tol:
            return eps - eps.mean()
        step = np.linalg.solve(hessian, -gradient)
        eps = _line_search(battles, eps, step, float(gradient @ step), l2)
    gradient, _ = _gradient_and_hessian(battles, eps, l2)
    if np.linalg.norm(gradient) < tol:
        return eps - eps.mean()
    raise RuntimeError(
        f"Bradley-Terry did not converge in {max_iter} Newton steps: gradient norm "
        f"{np.linalg.norm(gradient):.3g}, expected < {tol}"
    )


def elo_scores(
    ids: Sequence[str],
    outcomes: Sequence[Outcome],
    fallback: tuple[int, int] | None = None,
    l2: float = 0.01,
) -> tuple[dict[str, float], PositionWeights]:
    """Elo score per judgment id (summing to 0) and the position weights used."""
    weights = position_weights(outcomes, fallback)
    scores = bradley_terry(battle_matrix(ids, outcomes, weights), l2=l2)
    return {item_id: float(score) for item_id, score in zip(ids, scores)}, weights
