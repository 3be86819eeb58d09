"""Parse the judge's scores and the meta-judge's verdicts out of free text.

The judge ends its review with a line like ``Score: 4`` and the meta-judge
with ``Winner: Judgment A``.  Models sometimes restate the label while
reasoning, so only the LAST label in the text counts; an earlier valid label
never rescues a malformed final one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Optional markdown bold/italic around the label and the value, e.g.
# "**Score:** 4", "**Score**: 4", "Score: **4**".
_STARS = r"\*{0,2}"
_SCORE_LABEL = re.compile(
    rf"{_STARS}\bscore{_STARS}\s*:\s*{_STARS}\s*{_STARS}", re.IGNORECASE
)
_WINNER_LABEL = re.compile(
    rf"{_STARS}\bwinner{_STARS}\s*:\s*{_STARS}\s*{_STARS}", re.IGNORECASE
)
# A plain decimal number: "4", "-1", "4.5", "3." (read as 3), ".5".  It must
# not run straight into a letter ("4th", "4pts"), but may be followed by
# punctuation such as "/5" or a full stop.
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?!\w)")
_CHOICE = re.compile(r"judge?ment\s*([ab])\b", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedScore:
    """A judge score, or why none could be read.

    Exactly one field is None.  ``error`` is one of "no_score",
    "not_a_number", "out_of_range".
    """

    value: float | None
    error: str | None


@dataclass(frozen=True)
class ParsedWinner:
    """A meta-judge verdict ("A" or "B"), or why none could be read.

    Exactly one field is None.  ``error`` is one of "no_winner",
    "not_a_choice".
    """

    winner: str | None
    error: str | None


def _text_after_last(label: re.Pattern[str], text: str) -> str | None:
    """Return the text following the last match of ``label``, or None if absent."""
    last = None
    for match in label.finditer(text):
        last = match
    return None if last is None else text[last.end():]


def parse_score(text: str, low: float, high: float) -> ParsedScore:
    """Read the number after the last ``Score:`` label, checked against [low, high].

    ``low`` and ``high`` are the inclusive bounds of the rubric (e.g. 0 and 5
    points).  "Score: 4/5" reads as 4; "Score: 3." reads as 3.
    """
    if not low <= high:
        raise ValueError(f"score range must have low <= high, got low={low}, high={high}")
    rest = _text_after_last(_SCORE_LABEL, text)
    if rest is None:
        return ParsedScore(value=None, error="no_score")
    match = _NUMBER.match(rest)
    if match is None:
        return ParsedScore(value=None, error="not_a_number")
    value = float(match.group(0))
    if not math.isfinite(value) or not low <= value <= high:
        return ParsedScore(value=None, error="out_of_range")
    return ParsedScore(value=value, error=None)


def parse_winner(text: str) -> ParsedWinner:
    """Read "A" or "B" from the last ``Winner: Judgment X`` (or "Judgement X") label."""
    rest = _text_after_last(_WINNER_LABEL, text)
    if rest is None:
        return ParsedWinner(winner=None, error="no_winner")
    match = _CHOICE.match(rest)
    if match is None:
        return ParsedWinner(winner=None, error="not_a_choice")
    return ParsedWinner(winner=match.group(1).upper(), error=None)


def outcome_from_winner(winner: str | None) -> int:
    """Map a verdict to the ordered outcome: +1 if first-shown (A) wins, -1 if B, 0 if None."""
    if winner is None:
        return 0
    if winner == "A":
        return 1
    if winner == "B":
        return -1
    raise ValueError(f"winner must be 'A', 'B' or None, got {winner!r}")
