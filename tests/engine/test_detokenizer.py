"""Incremental detokenisation (output_processor.py) against full decodes: on random token id
sequences (multi-byte UTF-8 split across tokens, invalid byte runs, special tokens) the streamed
text is exactly `decode(ids, skip_special_tokens=True)`; with stop strings it is the full decode
cut where a slow reference that re-decodes every prefix first sees one; and only a few tokens are
decoded per token, however long the output."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.engine.output_processor import Detokenizer, IncrementalDecoder
from tests.support import byte_tokenizer

MULTIBYTE = "é€😀中文 naïve — ∑ über ½"
PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def default_tok(default_model_dir):
    from quietstar.checkpoint import load_tokenizer

    return load_tokenizer(default_model_dir)


def _ids(tok, data) -> list[int]:
    """Random ids: any id in the vocabulary (specials included), or pieces of multi-byte text."""
    pieces = tok(MULTIBYTE, add_special_tokens=False)["input_ids"]
    one = st.one_of(st.integers(0, len(tok) - 1), st.sampled_from(pieces))
    return data.draw(st.lists(one, max_size=40), label="ids")


def full(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def stream(tok, ids: list[int]) -> list[str]:
    decoder = IncrementalDecoder(tok)
    return [decoder.append(i) for i in ids] + [decoder.flush()]


def reference_stop(tok, ids: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    """Re-decode every prefix; text is visible once it ends on a whole character (or the output
    ends); the first prefix holding a stop string ends the text where the earliest one starts."""
    for k in range(1, len(ids) + 1):
        text = full(tok, ids[:k])
        if text.endswith("\ufffd") and k < len(ids):
            continue
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return text[: min(hits)], True
    return full(tok, ids), False


def check_stream_equals_full_decode(tok, ids):
    pieces = stream(tok, ids)
    assert "".join(pieces) == full(tok, ids)


def check_stops(tok, ids, data):
    text = full(tok, ids)
    inside = st.integers(0, max(len(text) - 1, 0)).flatmap(
        lambda a: st.integers(1, 6).map(lambda n: text[a : a + n])
    )
    stop = st.one_of(inside, st.text(min_size=1, max_size=3))
    stops = data.draw(st.lists(stop, min_size=1, max_size=3), label="stops")
    stops = tuple(s for s in stops if s and "\ufffd" not in s)
    detok, streamed, hit = Detokenizer(tok, stops), "", False
    for i in ids:
        piece, hit = detok.append(i)
        streamed += piece
        assert not any(s in streamed for s in stops), f"stop string leaked in {streamed!r}"
        if hit:
            break
    else:
        piece, hit = detok.flush()
        streamed += piece
    assert (streamed, hit) == reference_stop(tok, ids, stops)


@PROPERTY
@given(data=st.data())
def test_byte_tokenizer_stream_equals_full_decode(byte_tok, data):
    check_stream_equals_full_decode(byte_tok, _ids(byte_tok, data))


@PROPERTY
@given(data=st.data())
def test_default_tokenizer_stream_equals_full_decode(default_tok, data):
    check_stream_equals_full_decode(default_tok, _ids(default_tok, data))


@PROPERTY
@given(data=st.data())
def test_byte_tokenizer_stop_strings_match_reference(byte_tok, data):
    check_stops(byte_tok, _ids(byte_tok, data), data)


@PROPERTY
@given(data=st.data())
def test_default_tokenizer_stop_strings_match_reference(default_tok, data):
    check_stops(default_tok, _ids(default_tok, data), data)


def test_multibyte_character_split_across_tokens_waits_then_matches(byte_tok):
    ids = byte_tok(MULTIBYTE, add_special_tokens=False)["input_ids"]  # one token per byte
    pieces = stream(byte_tok, ids)
    assert "".join(pieces) == MULTIBYTE
    assert pieces[:3] == ["", "é", ""]  # é is two bytes: nothing until the second
    assert all("\ufffd" not in p for p in pieces)


def test_incomplete_last_character_is_flushed_as_a_full_decode_would(byte_tok):
    ids = byte_tok("a€", add_special_tokens=False)["input_ids"][:-1]  # "a" + 2 of 3 bytes
    pieces = stream(byte_tok, ids)
    assert pieces[:-1] == ["a", "", ""] and "".join(pieces) == full(byte_tok, ids)
    assert pieces[-1].endswith("\ufffd")


def test_decodes_a_few_tokens_per_token_not_the_output(default_tok):
    """The point of the offsets: per token, each decode sees a window of a few ids, however
    long the output grows (a full re-decode would see all of them)."""
    text = (MULTIBYTE + " The quick brown fox jumps over the lazy dog. ") * 20
    ids = default_tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 300
    seen: list[int] = []

    class Counting:
        def decode(self, window, **kwargs):
            seen.append(len(window))
            return default_tok.decode(window, **kwargs)

    pieces = stream(Counting(), ids)
    assert "".join(pieces) == full(default_tok, ids) == text
    assert max(seen) <= 4, max(seen)
