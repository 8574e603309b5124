"""Answer normalisation and extraction from free text: numbers (GSM8K) and letters (CSQA).

Normalisation follows lm-eval's GSM8K filters (commas, '$', trailing period ignored) and adds
numeric equality ("18.00" == "18"). No answer found -> None, which is scored as wrong.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

# A number not glued to a preceding word or digit: "-$1,234.50", "18", "0.5".
_NUMBER = r"(?<![\w.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
NUMBER_RE = re.compile(_NUMBER)
HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUMBER + ")")
NUMBER_ANSWER_RE = re.compile(r"(?i:answer is)\s*:?\s*\$?\s*(" + _NUMBER + ")")
LETTER_ANSWER_RE = re.compile(r"(?i:answer is)\s*:?\s*\(?([A-E])(?![A-Za-z])")
PAREN_LETTER_RE = re.compile(r"\(([A-E])\)")
LETTER_RE = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")
LETTERS = ("A", "B", "C", "D", "E")


def normalize_number(text: str | None) -> str | None:
    """Canonical form of a number string: "1,000" -> "1000", "$18.00." -> "18", "-0.50" -> "-0.5"."""
    if text is None:
        return None
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def first_number(text: str) -> str | None:
    match = NUMBER_RE.search(text)
    return normalize_number(match.group(0)) if match else None


def last_number(text: str) -> str | None:
    matches = NUMBER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def answer_is_number(text: str) -> str | None:
    """The number after the last "The answer is", if any."""
    matches = NUMBER_ANSWER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def final_number(text: str) -> str | None:
    """Chat-style GSM8K extraction: "#### N", then "The answer is N", then the last number."""
    match = HASH_RE.search(text)
    if match:
        return normalize_number(match.group(1))
    return answer_is_number(text) or last_number(text)


def extract_letter(text: str) -> str | None:
    """CSQA letter: the last "answer is X" / "answer is (X)", else the last "(X)", else the
    first standalone capital A-E (a short direct answer starts with it)."""
    for pattern in (LETTER_ANSWER_RE, PAREN_LETTER_RE):
        matches = pattern.findall(text)
        if matches:
            return matches[-1]
    match = LETTER_RE.search(text)
    return match.group(1) if match else None


def after_last(text: str, marker: str) -> str:
    """The text after the last `marker` (all of it when the marker is absent)."""
    index = text.rfind(marker)
    return text[index + len(marker) :] if index >= 0 else text


def truncate_cot(text: str) -> str:
    """Spec §6.2: cut a chain of thought where the model starts a new "Q:" or a "\\n\\n\\n".

    The prompt holds the first "Q:", so any "Q:" in the continuation is the second one.
    """
    cut = len(text)
    for marker in ("Q:", "\n\n\n"):
        index = text.find(marker)
        if index >= 0:
            cut = min(cut, index)
    return text[:cut]


def majority(predictions: Iterable[str | None]) -> str | None:
    """Most common non-None answer (Counter.most_common: ties go to the earliest); None if none."""
    counts = Counter(p for p in predictions if p is not None)
    return counts.most_common(1)[0][0] if counts else None
