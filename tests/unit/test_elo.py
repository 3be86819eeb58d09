"""Tests for position-weighted Bradley-Terry Elo scores of judgments."""

import math

import numpy as np
import pytest

from metarewarding.elo import (
    Outcome,
    PositionWeights,
    battle_matrix,
    bradley_terry,
    count_position_wins,
    elo_scores,
    position_weights,
)

IDS = ["j1", "j2", "j3"]

# Hand-built tournament over 3 judgments, both orders of each pair:
#   (j1, j2) +1  j1 wins shown first
#   (j2, j1) +1  j2 wins shown first      (position bias)
#   (j1, j3) +1  j1 wins shown first
#   (j3, j1) -1  j1 wins shown second
#   (j2, j3) +1  j2 wins shown first
#   (j3, j2)  0  unparsed
# w1 = 4 first-position wins, w2 = 1 second-position win.
TOURNAMENT = [
    Outcome("j1", "j2", 1),
    Outcome("j2", "j1", 1),
    Outcome("j1", "j3", 1),
    Outcome("j3", "j1", -1),
    Outcome("j2", "j3", 1),
    Outcome("j3", "j2", 0),
]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _stationarity_residual(battles, eps, l2):
    """Gradient of the penalised log-likelihood, written out independently."""
    n = len(eps)
    residual = np.zeros(n)
    for k in range(n):
        for m in range(n):
            residual[k] += battles[k, m] * (1 - _sigmoid(eps[k] - eps[m]))
            residual[k] -= battles[m, k] * (1 - _sigmoid(eps[m] - eps[k]))
        residual[k] -= l2 * eps[k]
    return residual


def _all_orders(ids, result):
    return [Outcome(a, b, result) for a in ids for b in ids if a != b]


def test_count_position_wins():
    assert count_position_wins(TOURNAMENT) == (4, 1)
    assert count_position_wins([]) == (0, 0)


def test_tournament_weights():
    # omega1 = w2 / (w1 + w2) = 1/5; omega2 = w1 / (w1 + w2) = 4/5
    weights = position_weights(TOURNAMENT)
    assert weights == PositionWeights(4, 1, pytest.approx(0.2), pytest.approx(0.8), "response")


def test_tournament_battle_matrix():
    # j1 > j2 first: B[0,1] += 0.2;  j2 > j1 first: B[1,0] += 0.2
    # j1 > j3 first: B[0,2] += 0.2;  j1 > j3 second: B[0,2] += 0.8 -> 1.0
    # j2 > j3 first: B[1,2] += 0.2;  (j3, j2) unparsed: nothing
    battles = battle_matrix(IDS, TOURNAMENT, position_weights(TOURNAMENT))
    expected = np.array([[0.0, 0.2, 1.0], [0.2, 0.0, 0.2], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(battles, expected)


def test_tournament_scores():
    scores, weights = elo_scores(IDS, TOURNAMENT)
    assert weights.source == "response"
    # j1 and j2 split their games, but j1 beats j3 by more than j2 does.
    assert scores["j1"] > scores["j2"] > scores["j3"]
    eps = np.array([scores[i] for i in IDS])
    assert eps.sum() == pytest.approx(0.0, abs=1e-12)
    battles = np.array([[0.0, 0.2, 1.0], [0.2, 0.0, 0.2], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(_stationarity_residual(battles, eps, 0.01), 0.0, atol=1e-9)


def test_degenerate_counts_fall_back_to_iteration():
    # This response: w1 = 2, w2 = 0 (degenerate).  Iteration totals (30, 10):
    # omega1 = 10/40 = 0.25, omega2 = 30/40 = 0.75.
    outcomes = [Outcome("j1", "j2", 1), Outcome("j2", "j1", 1)]
    weights = position_weights(outcomes, fallback=(30, 10))
    assert weights == PositionWeights(2, 0, 0.25, 0.75, "iteration")


def test_degenerate_fallback_gives_uniform():
    outcomes = [Outcome("j1", "j2", 1), Outcome("j2", "j1", 1)]
    assert position_weights(outcomes, fallback=(5, 0)) == PositionWeights(2, 0, 0.5, 0.5, "uniform")
    assert position_weights(outcomes) == PositionWeights(2, 0, 0.5, 0.5, "uniform")
    assert position_weights([]) == PositionWeights(0, 0, 0.5, 0.5, "uniform")


def test_negative_fallback_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        position_weights([], fallback=(-1, 3))


def test_position_biased_meta_judge_gives_equal_scores():
    # Always picks A: w1 = 6, w2 = 0 -> uniform weights.  Every judgment wins
    # exactly the 2 games where it was shown first, so B = 0.5 off-diagonal.
    outcomes = _all_orders(IDS, 1)
    scores, weights = elo_scores(IDS, outcomes)
    assert (weights.w1, weights.w2, weights.source) == (6, 0, "uniform")
    np.testing.assert_allclose(battle_matrix(IDS, outcomes, weights), 0.5 * (1 - np.eye(3)))
    np.testing.assert_allclose(list(scores.values()), 0.0, atol=1e-12)


def test_position_biased_meta_judge_with_iteration_fallback_still_equal():
    # Fallback (6, 4): omega1 = 0.4, so B = 0.4 off-diagonal: still symmetric.
    scores, weights = elo_scores(IDS, _all_orders(IDS, 1), fallback=(6, 4))
    assert weights.source == "iteration"
    np.testing.assert_allclose(list(scores.values()), 0.0, atol=1e-12)


def test_clean_sweep_is_finite_and_ranks_sweeper_first():
    # j1 beats both others in both orders; j2 and j3 each win once shown first.
    # w1 = 4, w2 = 2 -> omega1 = 1/3, omega2 = 2/3.
    # B[j1, j2] = B[j1, j3] = 1/3 + 2/3 = 1;  B[j2, j3] = B[j3, j2] = 1/3.
    outcomes = [
        Outcome("j1", "j2", 1), Outcome("j2", "j1", -1),
        Outcome("j1", "j3", 1), Outcome("j3", "j1", -1),
        Outcome("j2", "j3", 1), Outcome("j3", "j2", 1),
    ]
    scores, _ = elo_scores(IDS, outcomes)
    assert all(math.isfinite(s) for s in scores.values())
    assert scores["j1"] > scores["j2"]
    assert scores["j2"] == pytest.approx(scores["j3"], abs=1e-9)


def test_large_clean_sweep_stays_finite():
    # A strict 4-player ladder with 50 wins per game: the MLE without the
    # penalty would be infinite.
    ladder = 50.0 * np.triu(np.ones((4, 4)), k=1)
    eps = bradley_terry(ladder)
    assert np.all(np.isfinite(eps))
    assert list(np.argsort(-eps)) == [0, 1, 2, 3]
    np.testing.assert_allclose(_stationarity_residual(ladder, eps, 0.01), 0.0, atol=1e-8)


def test_two_player_sweep_closed_form():
    # B = [[0, 1], [0, 0]], eps = (x, -x): 1 - sigmoid(2x) = l2 * x.
    eps = bradley_terry(np.array([[0.0, 1.0], [0.0, 0.0]]), l2=0.01)
    x = eps[0]
    assert eps[1] == pytest.approx(-x)
    assert 1 - _sigmoid(2 * x) == pytest.approx(0.01 * x, abs=1e-12)


def test_two_player_log_odds():
    # With l2 -> 0 the MLE has sigmoid(eps1 - eps2) = B12 / (B12 + B21),
    # i.e. eps1 - eps2 = log(B12 / B21) = log(3 / 1).
    eps = bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), l2=1e-9)
    assert eps[0] - eps[1] == pytest.approx(math.log(3.0), abs=1e-6)
    assert eps.sum() == pytest.approx(0.0, abs=1e-12)


def test_penalty_shrinks_two_player_gap():
    # Stationarity at l2 = 0.5 for eps = (x, -x), d = 2x:
    # 3 * (1 - sigmoid(d)) - sigmoid(d) = l2 * x, i.e. 3 - 4 * sigmoid(2x) = 0.5 x.
    eps = bradley_terry(np.array([[0.0, 3.0], [1.0, 0.0]]), l2=0.5)
    x = eps[0]
    assert 3 - 4 * _sigmoid(2 * x) == pytest.approx(0.5 * x, abs=1e-10)
    assert 0 < eps[0] - eps[1] < math.log(3.0)


def test_relabelling_and_permuting_ids_permutes_scores():
    base, _ = elo_scores(IDS, TOURNAMENT)
    # Permute id order and outcome order.
    permuted, _ = elo_scores(["j3", "j1", "j2"], list(reversed(TOURNAMENT)))
    for key in IDS:
        assert permuted[key] == pytest.approx(base[key], abs=1e-9)
    # Rename j1 -> c, j2 -> a, j3 -> b.
    rename = {"j1": "c", "j2": "a", "j3": "b"}
    renamed_outcomes = [Outcome(rename[o.first], rename[o.second], o.result) for o in TOURNAMENT]
    renamed, _ = elo_scores(["a", "b", "c"], renamed_outcomes)
    for old, new in rename.items():
        assert renamed[new] == pytest.approx(base[old], abs=1e-9)


def test_scores_sum_to_zero_on_asymmetric_input():
    battles = np.array([[0.0, 2.0, 0.5, 1.0], [0.3, 0.0, 4.0, 0.0],
                        [1.0, 0.0, 0.0, 2.0], [0.0, 0.7, 0.1, 0.0]])
    eps = bradley_terry(battles)
    assert eps.sum() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(_stationarity_residual(battles, eps, 0.01), 0.0, atol=1e-9)


def test_all_zero_battles_give_zeros():
    np.testing.assert_array_equal(bradley_terry(np.zeros((3, 3))), np.zeros(3))
    scores, _ = elo_scores(IDS, [Outcome("j1", "j2", 0)])
    assert scores == {"j1": 0.0, "j2": 0.0, "j3": 0.0}


def test_unknown_id_is_named():
    with pytest.raises(ValueError, match="'j9'"):
        elo_scores(IDS, [Outcome("j1", "j9", 1)])


@pytest.mark.parametrize(
    ("battles", "l2", "message"),
    [
        (np.zeros((2, 3)), 0.01, "square"),
        (np.array([[0.0, -1.0], [0.0, 0.0]]), 0.01, "non-negative"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), 0.01, "zero diagonal"),
        (np.zeros((2, 2)), 0.0, "l2 must be > 0"),
    ],
)
def test_bradley_terry_rejects_bad_input(battles, l2, message):
    with pytest.raises(ValueError, match=message):
        bradley_terry(battles, l2=l2)


def test_outcome_validation():
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        Outcome("j1", "j2", 2)
    with pytest.raises(ValueError, match="two different judgments"):
        Outcome("j1", "j1", 1)
