"""Unit tests for metarewarding.metrics on synthetic inputs with hand-worked answers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from metarewarding.metrics import (
    Agreement,
    LengthControlled,
    agreement,
    bootstrap_interval,
    judge_preference_from_scores,
    length_controlled_win_rate,
    order_consistency,
    position_bias,
    preference_from_orders,
    score_bias,
    score_histogram,
    spearman,
    tie_share,
    win_rate,
)


# --------------------------------------------------------------------------- #
# preference_from_orders / win_rate
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("model", "model", 1.0),
        ("model", "reference", 0.5),
        ("model", "tie", 0.75),
        ("tie", "reference", 0.25),
        ("reference", "reference", 0.0),
        ("model", None, 1.0),
        (None, "tie", 0.5),
        (None, None, None),
    ],
)
def test_preference_from_orders(first, second, expected):
    assert preference_from_orders(first, second) == expected


def test_preference_from_orders_rejects_unknown_winner():
    with pytest.raises(ValueError, match="first_order"):
        preference_from_orders("A", "model")


def test_win_rate_hand_worked():
    # (1 + 0 + 0.5 + 1) / 4 = 0.625
    assert win_rate([1, 0, 0.5, 1]) == pytest.approx(62.5)


@pytest.mark.parametrize("bad", [[], [1.2], [-0.1], [float("nan")]])
def test_win_rate_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        win_rate(bad)


# --------------------------------------------------------------------------- #
# bootstrap_interval
# --------------------------------------------------------------------------- #
_PATTERN = [1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0]


def test_bootstrap_contains_estimate_and_is_reproducible():
    low, high = bootstrap_interval(_PATTERN * 5, seed=3)
    assert low <= win_rate(_PATTERN * 5) <= high
    assert 0.0 <= low < high <= 100.0
    assert bootstrap_interval(_PATTERN * 5, seed=3) == (low, high)
    assert bootstrap_interval(_PATTERN * 5, seed=4) != (low, high)


def test_bootstrap_narrows_with_more_items():
    small_low, small_high = bootstrap_interval(_PATTERN * 2, seed=0)
    large_low, large_high = bootstrap_interval(_PATTERN * 20, seed=0)
    # Width shrinks roughly like 1/sqrt(n): here sqrt(10) ~ 3.2 times.
    assert (large_high - large_low) < 0.5 * (small_high - small_low)


def test_bootstrap_of_constant_data_is_a_point():
    assert bootstrap_interval([1.0] * 7) == (100.0, 100.0)


def test_bootstrap_higher_level_is_wider():
    low90, high90 = bootstrap_interval(_PATTERN * 3, level=0.90)
    low99, high99 = bootstrap_interval(_PATTERN * 3, level=0.99)
    assert low99 <= low90 and high90 <= high99


def test_bootstrap_resamples_rows_of_2d_data():
    rng = np.random.default_rng(1)
    n = 200
    delta = rng.normal(0, 100, n)
    prefs = (rng.random(n) < 0.6).astype(float)
    data = np.column_stack([prefs, 500 + delta, np.full(n, 500.0)])
    estimate = length_controlled_win_rate(data[:, 0], data[:, 1], data[:, 2]).win_rate

    def lc_statistic(rows: np.ndarray) -> float:
        return length_controlled_win_rate(rows[:, 0], rows[:, 1], rows[:, 2]).win_rate

    low, high = bootstrap_interval(data, statistic=lc_statistic, n_boot=200)
    assert low <= estimate <= high


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_boot": 0}, "n_boot"), ({"level": 1.0}, "level"), ({"level": 0.0}, "level")],
)
def test_bootstrap_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval([1.0, 0.0], **kwargs)


def test_bootstrap_rejects_empty():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


# --------------------------------------------------------------------------- #
# length_controlled_win_rate
# --------------------------------------------------------------------------- #
def test_lc_equals_raw_when_preference_independent_of_length():
    # Every length difference carries the same preference pattern, so the
    # length term explains nothing: phi = 0 and sigmoid(theta) = mean(prefs).
    pattern = [1.0, 1.0, 0.0, 0.5, 1.0]
    deltas = [-300, -100, -20, 0, 40, 150, 400]
    prefs = [p for _ in deltas for p in pattern]
    model_len = [1000 + d for d in deltas for _ in pattern]
    reference_len = [1000] * len(prefs)
    result = length_controlled_win_rate(prefs, model_len, reference_len)
    assert isinstance(result, LengthControlled)
    assert result.phi == pytest.approx(0.0, abs=1e-4)  # tiny theta L2 nudges it
    assert result.win_rate == pytest.approx(win_rate(prefs), abs=0.01)  # raw = 70.0
    assert result.theta == pytest.approx(math.log(0.7 / 0.3), abs=1e-3)


def test_lc_removes_pure_length_preference():
    # The model wins exactly when it is longer; 75% of items are longer.
    # Deltas on both sides start at the same magnitude, so the decision
    # boundary sits at delta = 0 and the length-controlled rate is ~50.
    longer = list(range(10, 310, 10))  # 30 items
    shorter = [-d for d in range(10, 110, 10)]  # 10 items
    deltas = longer + shorter
    prefs = [1.0 if d > 0 else 0.0 for d in deltas]
    model_len = [800 + d for d in deltas]
    reference_len = [800] * len(deltas)
    raw = win_rate(prefs)
    result = length_controlled_win_rate(prefs, model_len, reference_len)
    assert raw == pytest.approx(75.0)
    assert result.phi > 1.0
    assert abs(result.win_rate - 50.0) < 5.0
    assert abs(result.win_rate - 50.0) < 0.2 * abs(raw - 50.0)


def test_lc_recovers_known_coefficients_from_simulated_annotations():
    theta, phi = 0.4, 1.5
    rng = np.random.default_rng(12345)
    n = 4000
    reference_len = rng.integers(300, 2000, n).astype(float)
    model_len = np.maximum(reference_len + rng.normal(150.0, 400.0, n), 1.0)
    delta = model_len - reference_len
    p = 1.0 / (1.0 + np.exp(-(theta + phi * np.tanh(delta / delta.std()))))
    prefs = (rng.random(n) < p).astype(float)
    result = length_controlled_win_rate(prefs, model_len, reference_len)
    assert result.theta == pytest.approx(theta, abs=0.15)
    assert result.phi == pytest.approx(phi, abs=0.3)
    expected_lc = 100.0 / (1.0 + math.exp(-theta))  # 59.87
    assert result.win_rate == pytest.approx(expected_lc, abs=3.5)
    # Longer outputs inflate the raw rate above the length-controlled one.
    assert win_rate(prefs) > result.win_rate


def test_lc_recovers_coefficients_exactly_from_soft_labels():
    # With y_i = p_i the (nearly unpenalised) optimum is the generating point.
    theta, phi = -0.3, 0.8
    delta = np.linspace(-500.0, 700.0, 61)
    y = 1.0 / (1.0 + np.exp(-(theta + phi * np.tanh(delta / delta.std()))))
    result = length_controlled_win_rate(
        y, 1000.0 + delta, np.full(61, 1000.0), l2=0.0, l2_theta=0.0
    )
    assert result.theta == pytest.approx(theta, abs=1e-8)
    assert result.phi == pytest.approx(phi, abs=1e-8)


@pytest.mark.parametrize(("value", "above"), [(1.0, True), (0.0, False)])
def test_lc_stays_finite_for_unanimous_preferences(value, above):
    n = 50
    result = length_controlled_win_rate([value] * n, list(range(100, 100 + n)), [120] * n)
    assert all(math.isfinite(v) for v in (result.win_rate, result.theta, result.phi))
    if above:
        assert 99.0 < result.win_rate < 100.0
    else:
        assert 0.0 < result.win_rate < 1.0


def test_lc_with_equal_lengths_drops_length_term():
    prefs = [1.0, 0.0, 1.0, 1.0]
    result = length_controlled_win_rate(prefs, [50] * 4, [50] * 4)
    assert result.phi == 0.0
    assert result.win_rate == pytest.approx(75.0, abs=0.01)


def test_lc_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="aligned"):
        length_controlled_win_rate([1.0, 0.0], [10, 20, 30], [10, 20])


def test_lc_result_is_frozen():
    result = length_controlled_win_rate([1.0, 0.0], [10, 20], [15, 15])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.theta = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- #
# agreement / judge_preference_from_scores
# --------------------------------------------------------------------------- #
def test_agreement_hand_worked():
    judge = ["A", "B", "tie", "A", None, "B", "tie", "A"]
    label = ["A", "A", "tie", "B", "A", "B", "A", "tie"]
    # matches: 0 (A), 2 (tie), 5 (B) -> 3 / 8
    # without ties: drop 2 (both tie), 6 (judge tie), 7 (label tie)
    #   -> items 0, 1, 3, 4, 5; matches 0 and 5 -> 2 / 5
    result = agreement(judge, label)
    assert result == Agreement(
        agreement=3 / 8, agreement_without_ties=2 / 5, n=8, n_without_ties=5, n_unparsed=1
    )


def test_agreement_empty_and_errors():
    assert agreement([], []) == Agreement(None, None, 0, 0, 0)
    with pytest.raises(ValueError, match="aligned"):
        agreement(["A"], ["A", "B"])
    with pytest.raises(ValueError, match="labels"):
        agreement(["A"], ["C"])
    with pytest.raises(ValueError, match="judge_prefs"):
        agreement(["model"], ["A"])


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(4.0, 3.0, "A"), (2, 5, "B"), (3.0, 3, "tie"), (None, 3.0, None), (1.0, float("nan"), None)],
)
def test_judge_preference_from_scores(a, b, expected):
    assert judge_preference_from_scores(a, b) == expected


# --------------------------------------------------------------------------- #
# spearman
# --------------------------------------------------------------------------- #
def test_spearman_with_ties_hand_worked():
    # ranks x = [1, 2.5, 2.5, 4], ranks y = [1, 3, 2, 4]; centred by 2.5:
    # sum(dx*dy) = 2.25 + 0 + 0 + 2.25 = 4.5, sum(dx^2) = 4.5, sum(dy^2) = 5
    # rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_monotone_and_reversed():
    assert spearman([1, 5, 10, 100], [0.1, 0.2, 0.3, 9.0]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_undefined_cases():
    assert spearman([1.0], [2.0]) is None
    assert spearman([], []) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    assert spearman([1, 2, 3], [4, 4, 4]) is None
    with pytest.raises(ValueError, match="aligned"):
        spearman([1, 2], [1, 2, 3])


# --------------------------------------------------------------------------- #
# Judge health
# --------------------------------------------------------------------------- #
def test_score_histogram_hand_worked():
    scores = [5, 4.6, 4.5, 4.4, 0, None, 3, float("nan"), 0.49]
    assert score_histogram(scores, 0, 5) == {
        "0": 2,
        "1": 0,
        "2": 0,
        "3": 1,
        "4": 1,
        "5": 3,
        "unparsed": 2,
    }


def test_score_histogram_rejects_off_scale():
    with pytest.raises(ValueError, match="off the scale"):
        score_histogram([6], 0, 5)
    with pytest.raises(ValueError, match="low"):
        score_histogram([], 5, 0)


def test_tie_share_hand_worked():
    groups = [
        [3.0, 3.0, 3.0],  # tied
        [3.0, 4.0, None],  # not tied
        [5.0, None, 5.0],  # tied (2 valid)
        [2.0, None],  # ineligible: 1 valid
        [],  # ineligible
        [1.0, 2.0],  # not tied
    ]
    assert tie_share(groups) == pytest.approx(2 / 4)
    assert tie_share([[1.0], [None, None]]) is None


def test_position_bias_hand_worked():
    results = [1, 1, -1, 0, 1, 0]
    assert position_bias(results) == pytest.approx(3 / 4)
    assert position_bias([(4.0, 3.0, 1), (2.0, 5.0, -1), (1.0, 1.0, 0)]) == pytest.approx(1 / 2)
    assert position_bias([0, 0]) is None
    with pytest.raises(ValueError, match="result"):
        position_bias([2])


def test_score_bias_hand_worked():
    comparisons = [
        (5.0, 3.0, 1),  # higher (first) won
        (2.0, 4.0, -1),  # higher (second) won
        (5.0, 3.0, -1),  # lower won
        (4.0, 4.0, 1),  # equal scores: ineligible
        (None, 3.0, 1),  # missing score: ineligible
        (1.0, 5.0, 0),  # unparsed: ineligible
        (1.0, 5.0, 1),  # lower won
    ]
    assert score_bias(comparisons) == pytest.approx(2 / 4)
    assert score_bias([(3.0, 3.0, 1)]) is None


def test_order_consistency_hand_worked():
    pairs = [(1, -1), (-1, 1), (1, 1), (-1, -1), (0, 1), (1, 0), (0, 0)]
    # both parsed: first four; consistent: first two -> 2 / 4
    assert order_consistency(pairs) == pytest.approx(0.5)
    assert order_consistency([(0, 1)]) is None
    with pytest.raises(ValueError, match="result"):
        order_consistency([(1, 3)])
