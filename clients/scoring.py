"""Scores computed from echoed prompt logprobs, and the Wilson interval for summaries.

`soft_answer_score` is the paper's training-time metric (spec §6.1) rebuilt from an OpenAI
completions `logprobs` object; `continuation_logprob` is lm-eval's loglikelihood (anchors §5.1).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

DIGITS = frozenset("0123456789\n")
LETTER_SET = frozenset("ABCDE\n")
# Raw sentencepiece / byte-level spellings a server might return instead of decoded text.
_NEWLINES = {"<0x0A>": "\n", "Ċ": "\n", "\\n": "\n"}


class SoftScore(NamedTuple):
    score: float  # product of the renormalised probabilities, in [0, 1]
    tokens: list[tuple[str, float]]  # (answer token, its renormalised probability)


def canonical_token(token: str) -> str:
    """Token text as a member of an allowed set: newline spellings -> "\\n", leading spaces
    (" ", "▁", "Ġ") dropped, so " 7" and "7" are both the digit 7; a bare space becomes ""."""
    if token in _NEWLINES:
        return _NEWLINES[token]
    if token.strip(" ") == "\n":
        return "\n"
    return token.lstrip(" ▁Ġ")


def answer_start(prompt: str, marker: str = "\nA:") -> int:
    """Character offset just after the last `marker` (spec §6.1: "locate the last \\nA:")."""
    index = prompt.rfind(marker)
    if index < 0:
        raise ValueError(f"prompt has no {marker!r} marker")
    return index + len(marker)


def soft_answer_score(logprobs: dict[str, Any], start: int, allowed: frozenset[str]) -> SoftScore:
    """Spec §6.1 soft metric over the echoed answer tokens at offsets >= `start`.

    Each answer token in the allowed set gets its probability renormalised over the allowed
    tokens of that position; tokens outside the set (the leading space piece, commas) are
    skipped, so the space piece the official code drops for numbers drops out here too.
    Approximation: the server only returns the top-N alternatives, so allowed tokens missing
    from `top_logprobs` get no mass (the score is then an upper bound of the exact one).
    """
    tokens, token_lps, offsets = _columns(logprobs)
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    product, kept = 1.0, []
    for token, lp, offset, top in zip(tokens, token_lps, offsets, tops, strict=True):
        if offset < start or lp is None or canonical_token(token) not in allowed:
            continue
        alternatives = dict(top or {})
        alternatives[token] = lp  # the echoed token itself is always a candidate
        mass = sum(math.exp(v) for k, v in alternatives.items() if canonical_token(k) in allowed)
        probability = math.exp(lp) / mass
        product *= probability
        kept.append((token, probability))
    return SoftScore(product, kept)


def continuation_logprob(logprobs: dict[str, Any], start: int) -> float:
    """Sum of the logprobs of the tokens from the one holding character `start` to the end.

    That token is the last one starting at or before `start`: with a context ending in ":" and
    a continuation " bank" it is the " bank" token itself.
    """
    _, token_lps, offsets = _columns(logprobs)
    first = max((i for i, offset in enumerate(offsets) if offset <= start), default=0)
    return sum(lp for lp in token_lps[first:] if lp is not None)


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a mean of n scores in [0, 1].

    For the soft metric this treats the mean as a proportion; a [0, 1] variable with mean p has
    variance <= p(1-p), so the interval is conservative there.
    """
    if n <= 0:
        return (0.0, 1.0)
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def _columns(logprobs: dict[str, Any]) -> tuple[list[str], list[float | None], list[int]]:
    tokens = list(logprobs.get("tokens") or [])
    token_lps = list(logprobs.get("token_logprobs") or [])
    offsets = list(logprobs.get("text_offset") or [])
    if not tokens or not (len(tokens) == len(token_lps) == len(offsets)):
        raise ValueError("logprobs need equally long tokens, token_logprobs and text_offset")
    return tokens, token_lps, offsets
