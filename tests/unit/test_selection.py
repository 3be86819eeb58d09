"""Tests for actor and judge preference-pair selection."""

import random

import pytest

from metarewarding.selection import (
    Candidate,
    RatedJudgment,
    Selected,
    Skipped,
    score_variance,
    select_actor_pair,
    select_high_variance,
    select_judge_pair,
)


def _cands(*rows):
    """Build candidates from (id, reward, length) rows."""
    return [Candidate(id=i, reward=r, length=n) for i, r, n in rows]


# ---------------------------------------------------------------- actor pairs


def test_rho_zero_is_shortest_best_vs_longest_worst():
    # S_max = 5, S_min = 1.  Best tier {a, b}: shortest is b (120).
    # Worst tier {d, e}: longest is e (400).  c (3) is in neither.
    cands = _cands(("a", 5, 300), ("b", 5, 120), ("c", 3, 50), ("d", 1, 200), ("e", 1, 400))
    assert select_actor_pair(cands, rho=0.0) == Selected("b", "e", "best_vs_worst")


def test_rho_032_worked_thresholds():
    # S_max = 5, S_min = 0.
    # chosen threshold   = (1 - 0.32) * 5 + 0.32 * 0 = 3.4 -> eligible a, b, c
    # rejected threshold = 0.32 * 5 + (1 - 0.32) * 0 = 1.6 -> eligible e, f
    # chosen = shortest of a(900), b(500), c(200) = c; d(100) is 3.0 < 3.4.
    # rejected = longest of e(1000), f(600) = e.
    cands = _cands(
        ("a", 5.0, 900), ("b", 4.0, 500), ("c", 3.5, 200),
        ("d", 3.0, 100), ("e", 1.5, 1000), ("f", 0.0, 600),
    )
    assert select_actor_pair(cands, rho=0.32) == Selected("c", "e", "length_controlled")


def test_chosen_length_tie_prefers_higher_reward_then_earlier():
    # rho = 0.32, S_max = 5, S_min = 0: chosen tier is reward >= 3.4.
    # x(4.0) and y(5.0) are both 100 chars -> y (higher reward).
    cands = _cands(("x", 4.0, 100), ("y", 5.0, 100), ("z", 0.0, 50))
    assert select_actor_pair(cands, rho=0.32).chosen == "y"
    # Same length and reward -> the earlier one (p).
    cands = _cands(("p", 5.0, 100), ("q", 5.0, 100), ("z", 0.0, 50))
    assert select_actor_pair(cands, rho=0.32).chosen == "p"


def test_rejected_length_tie_prefers_lower_reward_then_earlier():
    # rho = 0.32, S_max = 5, S_min = 0: rejected tier is reward <= 1.6.
    # r1(1.0) and r2(0.0) are both 800 chars -> r2 (lower reward).
    cands = _cands(("top", 5.0, 10), ("r1", 1.0, 800), ("r2", 0.0, 800))
    assert select_actor_pair(cands, rho=0.32).rejected == "r2"
    # Same length and reward -> the earlier one (s1).
    cands = _cands(("top", 5.0, 10), ("s1", 0.0, 800), ("s2", 0.0, 800))
    assert select_actor_pair(cands, rho=0.32).rejected == "s1"


def test_candidate_exactly_on_chosen_threshold_is_kept():
    # rho = 0.1, S_max = 3, S_min = 1: threshold (0.9 * 3 + 0.1 * 1) is 2.8
    # exactly, but computes to 2.8000000000000003 in floats.  "edge" (2.8)
    # sits on it and is the shortest, so it must be chosen.
    cands = _cands(("top", 3.0, 500), ("edge", 2.8, 100), ("bottom", 1.0, 300))
    assert select_actor_pair(cands, rho=0.1).chosen == "edge"


def test_candidate_exactly_on_rejected_threshold_is_kept():
    # rho = 0.3, S_max = 4.5, S_min = 0.5: threshold (0.3 * 4.5 + 0.7 * 0.5)
    # is 1.7 exactly, but computes to 1.6999999999999997.  "edge" (1.7) is the
    # longest, so it must be rejected.
    cands = _cands(("top", 4.5, 100), ("edge", 1.7, 900), ("bottom", 0.5, 200))
    assert select_actor_pair(cands, rho=0.3).rejected == "edge"


def test_overlapping_tiers_rho_06_can_still_select():
    # S_max = 5, S_min = 0: chosen tier reward >= 2.0, rejected tier <= 3.0.
    # chosen = shortest of a(500), b(100) = b (2.5).
    # rejected = longest of b(100), c(300) = c (0.0).  2.5 > 0 -> kept.
    cands = _cands(("a", 5.0, 500), ("b", 2.5, 100), ("c", 0.0, 300))
    assert select_actor_pair(cands, rho=0.6) == Selected("b", "c", "length_controlled")


def test_overlapping_tiers_same_response():
    # As above but c is only 50 chars: the longest in the rejected tier
    # {b(100), c(50)} is b, which is also the chosen one.
    cands = _cands(("a", 5.0, 500), ("b", 2.5, 100), ("c", 0.0, 50))
    assert select_actor_pair(cands, rho=0.6) == Skipped("same_response")


def test_overlapping_tiers_chosen_not_better():
    # chosen tier (>= 2.0): a(500), b(100), x(900) -> b (2.5)
    # rejected tier (<= 3.0): b(100), x(900), z(50) -> x (3.0)
    # 2.5 <= 3.0 -> skipped.
    cands = _cands(("a", 5.0, 500), ("b", 2.5, 100), ("x", 3.0, 900), ("z", 0.0, 50))
    assert select_actor_pair(cands, rho=0.6) == Skipped("chosen_not_better")


def test_length_cap_on_chosen_is_inclusive():
    # Same pool as the rho = 0 test: chosen is b with 120 chars.
    cands = _cands(("a", 5, 300), ("b", 5, 120), ("c", 3, 50), ("d", 1, 200), ("e", 1, 400))
    assert select_actor_pair(cands, rho=0.0, max_chosen_chars=119) == Skipped("chosen_too_long")
    assert select_actor_pair(cands, rho=0.0, max_chosen_chars=120) == Selected(
        "b", "e", "best_vs_worst"
    )


def test_none_rewards_are_ignored():
    # Only b (4) and d (2) are scored; the unscored a and c would otherwise be
    # the shortest/longest.
    cands = _cands(("a", None, 10), ("b", 4.0, 100), ("c", None, 5000), ("d", 2.0, 300))
    assert select_actor_pair(cands, rho=0.0) == Selected("b", "d", "best_vs_worst")


def test_fewer_than_two_scored():
    assert select_actor_pair(_cands(("a", None, 10), ("b", 4.0, 5)), 0.0) == Skipped(
        "fewer_than_2_scored"
    )
    assert select_actor_pair([], 0.0) == Skipped("fewer_than_2_scored")


def test_all_tied_is_checked_before_length_cap():
    cands = _cands(("a", 3.0, 500), ("b", 3.0, 600))
    assert select_actor_pair(cands, 0.0, max_chosen_chars=1) == Skipped("all_tied")


@pytest.mark.parametrize("rho", [-0.1, 1.1])
def test_rho_out_of_range(rho):
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\]"):
        select_actor_pair(_cands(("a", 1.0, 1), ("b", 2.0, 1)), rho)


def test_duplicate_candidate_ids_rejected():
    with pytest.raises(ValueError, match="'a' more than once"):
        select_actor_pair(_cands(("a", 1.0, 1), ("a", 2.0, 1)), 0.0)


# ------------------------------------------------------------------ variance


def test_score_variance_population():
    # [4, 5]: mean 4.5, squared deviations 0.25 + 0.25 = 0.5, / 2 = 0.25
    assert score_variance([4, 5]) == pytest.approx(0.25)
    # [1, 2, 3] (None ignored): mean 2, (1 + 0 + 1) / 3 = 2/3
    assert score_variance([1, None, 2, 3]) == pytest.approx(2 / 3)


def test_score_variance_needs_two_valid():
    assert score_variance([3]) is None
    assert score_variance([None, 4]) is None
    assert score_variance([]) is None


def test_high_variance_picks_max_without_consuming_rng():
    # r1: 0;  r2: [2, 5] mean 3.5, (2.25 + 2.25) / 2 = 2.25;  r3: [3, 4] 0.25
    rng = random.Random(0)
    state = rng.getstate()
    assert select_high_variance({"r1": [4, 4, 4], "r2": [2, 5, None], "r3": [3, 4]}, rng) == "r2"
    assert rng.getstate() == state


def test_high_variance_tie_broken_by_seeded_rng():
    # r1: [1, 3] -> 1;  r2: [2, 4] -> 1;  r3: 0.  Tie between r1 and r2.
    groups = {"r2": [2, 4], "r3": [5, 5], "r1": [1, 3]}
    expected = random.Random(7).choice(["r1", "r2"])  # sorted tied keys
    assert select_high_variance(groups, random.Random(7)) == expected
    # Insertion order of the mapping does not matter.
    reordered = {"r1": [1, 3], "r2": [2, 4], "r3": [5, 5]}
    assert select_high_variance(reordered, random.Random(7)) == expected


def test_high_variance_tie_is_seed_dependent_but_deterministic():
    groups = {"r1": [1, 3], "r2": [2, 4]}
    picks = {select_high_variance(groups, random.Random(seed)) for seed in range(20)}
    assert picks == {"r1", "r2"}  # both tied keys are reachable
    for seed in range(5):
        first = select_high_variance(groups, random.Random(seed))
        assert select_high_variance(groups, random.Random(seed)) == first


def test_high_variance_float_noise_still_ties():
    # [0.1, 0.3] and [0.2, 0.4] both have variance 0.01 but differ in the last
    # bits as floats; at 12 decimals they tie, so the rng is consulted.
    a, b = score_variance([0.1, 0.3]), score_variance([0.2, 0.4])
    assert a != b and round(a, 12) == round(b, 12)
    rng = random.Random(3)
    state = rng.getstate()
    select_high_variance({"a": [0.1, 0.3], "b": [0.2, 0.4]}, rng)
    assert rng.getstate() != state


def test_high_variance_zero_variance_skipped():
    assert select_high_variance({"r1": [4, 4], "r2": [3, 3, None]}, random.Random(0)) == Skipped(
        "no_variance"
    )
    # Identical decimals whose float mean is slightly off still count as zero.
    assert select_high_variance({"r1": [0.1, 0.1, 0.1]}, random.Random(0)) == Skipped(
        "no_variance"
    )
    # One group too small, the other constant: still "no_variance".
    assert select_high_variance({"r1": [4], "r2": [3, 3]}, random.Random(0)) == Skipped(
        "no_variance"
    )


def test_high_variance_without_two_valid_judgments():
    assert select_high_variance({"r1": [4], "r2": [None, None]}, random.Random(0)) == Skipped(
        "fewer_than_2_valid_judgments"
    )
    assert select_high_variance({}, random.Random(0)) == Skipped("fewer_than_2_valid_judgments")


# --------------------------------------------------------------- judge pairs


def _judg(*rows):
    """Build rated judgments from (id, text, elo) rows."""
    return [RatedJudgment(id=i, text=t, elo=e) for i, t, e in rows]


def test_judge_pair_highest_vs_lowest_with_earlier_tie_break():
    # j1 and j3 share the top Elo 0.5 -> j1 (earlier).  Lowest is j2.
    judgments = _judg(("j1", "good", 0.5), ("j2", "bad", -1.0), ("j3", "also good", 0.5))
    assert select_judge_pair(judgments) == Selected("j1", "j2", "highest_vs_lowest_elo")
    # j2 and j3 share the bottom Elo -> j2 (earlier).
    judgments = _judg(("j1", "good", 1.0), ("j2", "bad", -1.0), ("j3", "worse", -1.0))
    assert select_judge_pair(judgments).rejected == "j2"


def test_judge_pair_skips():
    assert select_judge_pair(_judg(("j1", "x", 0.0))) == Skipped("fewer_than_2_judgments")
    tied = _judg(("j1", "x", 0.2), ("j2", "y", 0.2 + 1e-10))
    # elo_tie is checked before the length cap.
    assert select_judge_pair(tied, max_chosen_chars=0) == Skipped("elo_tie")
    same = _judg(("j1", "  Score: 4\n", 1.0), ("j2", "Score: 4", -1.0))
    assert select_judge_pair(same) == Skipped("identical_texts")


def test_judge_pair_length_cap_is_inclusive():
    # chosen text "long text" has 9 characters.
    judgments = _judg(("j1", "long text", 1.0), ("j2", "short", -1.0))
    assert select_judge_pair(judgments, max_chosen_chars=8) == Skipped("chosen_too_long")
    assert select_judge_pair(judgments, max_chosen_chars=9) == Selected(
        "j1", "j2", "highest_vs_lowest_elo"
    )
