"""Scores from hand-made logprobs (paper soft metric, loglik) and the Wilson interval."""

from __future__ import annotations

import math

import pytest

from clients.scoring import (
    DIGITS,
    LETTER_SET,
    answer_start,
    canonical_token,
    continuation_logprob,
    soft_answer_score,
    wilson_interval,
)

ln = math.log


def echo(pieces: list[tuple[str, float | None, dict[str, float] | None]]) -> dict:
    """A completions logprobs object from (token, probability, {alternative: probability})."""
    offsets, position = [], 0
    for token, _, _ in pieces:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": [t for t, _, _ in pieces],
        "token_logprobs": [None if p is None else ln(p) for _, p, _ in pieces],
        "top_logprobs": [
            None if a is None else {k: ln(v) for k, v in a.items()} for _, _, a in pieces
        ],
        "text_offset": offsets,
    }


def test_soft_score_digits_hand_computed() -> None:
    prompt = "Q: q\nA: no\nQ: 6*2?\nA: 12\n"
    pieces = [
        ("Q", None, None), (":", 0.1, {}), (" q", 0.1, {}), ("\n", 0.1, {}), ("A", 0.1, {}),
        (":", 0.1, {}), (" no", 0.1, {}), ("\n", 0.1, {}), ("Q", 0.1, {}), (":", 0.1, {}),
        (" 6", 0.1, {}), ("*", 0.1, {}), ("2", 0.1, {}), ("?", 0.1, {}), ("\n", 0.1, {}),
        ("A", 0.1, {}), (":", 0.1, {}),
        (" ", 0.9, {" ": 0.9}),  # the space piece: not in the allowed set, skipped
        ("1", 0.6, {"1": 0.6, "2": 0.2, "a": 0.1}),  # 0.6 / (0.6 + 0.2) = 0.75
        ("2", 0.5, {"2": 0.5, "3": 0.25, " ": 0.2}),  # 0.5 / 0.75 = 2/3
        ("\n", 0.4, {"\n": 0.4, "0": 0.1, "!": 0.3}),  # 0.4 / 0.5 = 0.8
    ]  # fmt: skip
    logprobs = echo(pieces)
    assert "".join(logprobs["tokens"]) == prompt
    soft = soft_answer_score(logprobs, answer_start(prompt), DIGITS)
    assert soft.score == pytest.approx(0.75 * 2 / 3 * 0.8)  # = 0.4
    assert [t for t, _ in soft.tokens] == ["1", "2", "\n"]  # only after the LAST "\nA:"


def test_soft_score_skips_commas_and_handles_missing_top_entry() -> None:
    prompt = "Q: x\nA: 1,2\n"
    pieces = [
        ("Q", None, None), (":", 0.1, {}), (" x", 0.1, {}), ("\n", 0.1, {}), ("A", 0.1, {}),
        (":", 0.1, {}),
        (" 1", 0.5, {" 1": 0.5, "7": 0.5}),  # a space-merged digit still counts: 0.5
        (",", 0.9, {",": 0.9}),  # comma: skipped
        ("2", 0.1, {"3": 0.3}),  # echoed token outside the top-N list: 0.1 / 0.4 = 0.25
        ("<0x0A>", 0.5, {"<0x0A>": 0.5}),  # raw sentencepiece newline: 1.0
    ]  # fmt: skip
    soft = soft_answer_score(echo(pieces), answer_start(prompt), DIGITS)
    assert soft.score == pytest.approx(0.5 * 0.25 * 1.0)


def test_soft_score_letters() -> None:
    prompt = "Q: s\n(A) x\nA: B\n"
    pieces = [
        ("Q: s\n(A) x\n", None, None), ("A", 0.1, {}), (":", 0.1, {}),
        (" B", 0.6, {" B": 0.6, " C": 0.2, " the": 0.2}),  # 0.6 / 0.8
        ("\n", 0.9, {"\n": 0.9, "A": 0.1}),  # 0.9 / 1.0
    ]  # fmt: skip
    soft = soft_answer_score(echo(pieces), answer_start(prompt), LETTER_SET)
    assert soft.score == pytest.approx(0.75 * 0.9)


def test_canonical_token() -> None:
    assert canonical_token("▁B") == "B"
    assert canonical_token("Ċ") == "\n"
    assert canonical_token(" ") == ""
    assert canonical_token(" \n") == "\n"


def test_answer_start_needs_marker() -> None:
    with pytest.raises(ValueError, match="marker"):
        answer_start("no marker here")


def test_continuation_logprob() -> None:
    context = "Question: q\nAnswer:"
    pieces = [
        ("Question", None, None), (":", 0.5, {}), (" q", 0.5, {}), ("\n", 0.5, {}),
        ("Answer", 0.5, {}), (":", 0.5, {}), (" river", 0.25, {}), (" bank", 0.5, {}),
    ]  # fmt: skip
    assert continuation_logprob(echo(pieces), len(context)) == pytest.approx(ln(0.25 * 0.5))
    merged = [("Question: q\nAnswer", None, None), (": r", 0.2, {}), ("iver", 0.5, {})]
    # the token holding the first continuation character counts, even if it straddles
    assert continuation_logprob(echo(merged), len(context)) == pytest.approx(ln(0.1))


def test_wilson_interval() -> None:
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0.3, 0) == (0.0, 1.0)
