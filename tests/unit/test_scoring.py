"""Tests for parsing judge scores and meta-judge verdicts."""

import pytest

from metarewarding.scoring import (
    ParsedScore,
    ParsedWinner,
    outcome_from_winner,
    parse_score,
    parse_winner,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is fine.\nScore: 4", 4.0),
        ("Score: 4.5", 4.5),
        ("Score: 3.", 3.0),  # trailing dot: still the number 3
        ("Score: 4/5", 4.0),  # "4/5": the number right after the label is 4
        ("**Score:** 4", 4.0),  # markdown bold around the label
        ("**Score**: 2", 2.0),  # bold closes before the colon
        ("Score: **3**", 3.0),  # bold around the value
        ("SCORE : 5", 5.0),  # case-insensitive, space before the colon
        ("final score:1", 1.0),  # no space after the colon
        ("Score: 4.", 4.0),  # sentence-ending full stop
    ],
)
def test_parse_score_reads_number_after_label(text, expected):
    assert parse_score(text, 0, 5) == ParsedScore(value=expected, error=None)


def test_parse_score_uses_last_label():
    # The judge drafts "Score: 1" while reasoning, then settles on 5.
    text = "At first I thought Score: 1 but on reflection...\nScore: 5"
    assert parse_score(text, 0, 5).value == 5.0


def test_parse_score_earlier_valid_label_does_not_rescue_bad_last_one():
    text = "Score: 4\nActually I cannot decide. Score: N/A"
    assert parse_score(text, 0, 5) == ParsedScore(value=None, error="not_a_number")


def test_parse_score_range_is_inclusive():
    assert parse_score("Score: 0", 0, 5).value == 0.0
    assert parse_score("Score: 5", 0, 5).value == 5.0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("No label here, just 4 points.", "no_score"),
        ("The score is 4", "no_score"),  # no colon: not the label
        ("Subscore: 3", "no_score"),  # "score" inside another word
        ("Score: four", "not_a_number"),
        ("Score: N/A", "not_a_number"),
        ("Score:", "not_a_number"),  # label at the very end
        ("Score: 4th place", "not_a_number"),  # number runs into letters
        ("Score: 6", "out_of_range"),
        ("Score: 5.5", "out_of_range"),
        ("Score: -1", "out_of_range"),
    ],
)
def test_parse_score_failures(text, error):
    assert parse_score(text, 0, 5) == ParsedScore(value=None, error=error)


def test_parse_score_respects_custom_range():
    # On a 1..10 rubric, 7 is valid and 0 is not.
    assert parse_score("Score: 7", 1, 10).value == 7.0
    assert parse_score("Score: 0", 1, 10).error == "out_of_range"


def test_parse_score_rejects_inverted_range():
    with pytest.raises(ValueError, match="low <= high"):
        parse_score("Score: 3", 5, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Winner: Judgment A", "A"),
        ("Winner: Judgement B", "B"),  # British spelling
        ("**Winner:** Judgment B", "B"),  # markdown bold
        ("winner: judgment a", "A"),  # case-insensitive
        ("Winner: Judgment B.", "B"),
        ("Winner: Judgment A\n...on reflection\nWinner: Judgment B", "B"),  # last wins
    ],
)
def test_parse_winner_reads_choice(text, expected):
    assert parse_winner(text) == ParsedWinner(winner=expected, error=None)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Judgment A is better.", "no_winner"),
        ("Winner: Both", "not_a_choice"),
        ("Winner: Judgment C", "not_a_choice"),
        ("Winner: Judgment A\nWinner: tie", "not_a_choice"),  # last label is bad
    ],
)
def test_parse_winner_failures(text, error):
    assert parse_winner(text) == ParsedWinner(winner=None, error=error)


def test_outcome_from_winner():
    # m shown first (A), n second (B): A winning means m wins (+1).
    assert outcome_from_winner("A") == 1
    assert outcome_from_winner("B") == -1
    assert outcome_from_winner(None) == 0


def test_outcome_from_winner_rejects_other_labels():
    with pytest.raises(ValueError, match="'A', 'B' or None"):
        outcome_from_winner("C")
