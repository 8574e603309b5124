"""Answer normalisation and extraction (numbers, letters, CoT truncation, majority vote)."""

from __future__ import annotations

import pytest

from clients import csqa, gsm8k
from clients.answers import (
    extract_letter,
    final_number,
    first_number,
    last_number,
    majority,
    normalize_number,
    truncate_cot,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("18", "18"),
        (" 1,000 ", "1000"),
        ("$18.00", "18"),
        ("18.", "18"),
        ("-3", "-3"),
        ("-$1,234.50", "-1234.5"),
        ("0.50", "0.5"),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_number(raw: str | None, expected: str | None) -> None:
    assert normalize_number(raw) == expected


def test_first_and_last_number() -> None:
    text = "She had -5 dollars, then earned $3,000.50 in 2023-2024."
    assert first_number(text) == "-5"
    assert last_number(text) == "2024"  # the hyphen of a range is not a minus sign
    assert first_number("no digits here") is None
    assert last_number("Q3 results") is None  # digits glued to a word are not a number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She pays 3 + 4 = 7 dollars.\n#### 1,234", "1234"),
        ("#### 5\nThe answer is 6", "5"),  # '####' wins
        ("So 2 * 3 = 6. The answer is $42.", "42"),
        ("Thus the answer is: -7.50", "-7.5"),
        ("3 + 4 = 7 apples", "7"),  # last number as a fallback
        ("I cannot tell.", None),
    ],
)
def test_final_number(text: str, expected: str | None) -> None:
    assert final_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" B", "B"),
        (" (C) shoe", "C"),
        ("Options (A) and (B) fail, so the answer is D.", "D"),
        ("The answer is (E).", "E"),
        ("Not (A), it is (C).", "C"),
        ("answer: E", "E"),
        ("I do not know", None),
        ("", None),
    ],
)
def test_extract_letter(text: str, expected: str | None) -> None:
    assert extract_letter(text) == expected


def test_gsm8k_extraction_per_protocol() -> None:
    assert gsm8k.extract_answer(" 18", "direct") == "18"
    assert gsm8k.extract_answer(" The answer is 1,000.", "direct") == "1000"
    assert gsm8k.extract_answer(" nothing", "direct") is None
    cot = " 3 boxes of 6 is 18, minus 2.\nTherefore, the answer (arabic numerals) is 16. Next 99"
    assert gsm8k.extract_answer(cot, "cot") == "16"  # first number after the trigger
    assert gsm8k.extract_answer("5 then 6\n#### 18.00", "chat") == "18"


def test_csqa_extraction_per_protocol() -> None:
    assert csqa.extract_answer(" B\n", "direct") == "B"
    cot = " A river is not safe (A).\nTherefore, among A through E, the answer is (B) bank."
    assert csqa.extract_answer(cot, "cot") == "B"
    assert csqa.extract_answer("Banks keep money. The answer is (B).", "chat") == "B"


def test_truncate_cot() -> None:
    assert truncate_cot(" 2 + 2 = 4.\n\nQ: Another question") == " 2 + 2 = 4.\n\n"
    assert truncate_cot(" so 4.\n\n\n\nrambling Q:") == " so 4."
    assert truncate_cot(" plain") == " plain"


def test_majority() -> None:
    assert majority(["3", None, "4", "3"]) == "3"
    assert majority(["4", "3"]) == "4"  # ties go to the earliest (Counter.most_common)
    assert majority([None, None]) is None
