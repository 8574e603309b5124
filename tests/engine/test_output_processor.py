"""The output processor (API-process side): text filled in token by token, stop strings cut where
they start (also across tokens and for several stops), held-back text released at a length
finish, and the engine told to abort a request its stop string ended, on the default model."""

from __future__ import annotations

import pytest
import torch

import quietstar
from server.engine import FinishReason, SamplingParams
from server.engine.output_processor import Detokenizer, RequestText
from tests.engine.engine_support import Choice, make_engine


@pytest.fixture(scope="module")
def default_engine(default_model_dir):
    return make_engine(quietstar.load(default_model_dir, dtype=torch.float32), max_num_thoughts=1)


COUNTING = "Count from one to ten: 1, 2, 3,"  # greedy: " 4, 5, 6, 7, 8, 9, 1..."


def run_stop(engine, stop: tuple[str, ...], max_tokens: int = 20, prompt: str = COUNTING):
    """Drive the engine as the API process does: outputs through RequestText, and an abort as
    soon as the processor says the engine may still run a finished request."""
    ids = engine.tokenizer(prompt)["input_ids"]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, stop=stop)
    engine.add_request("s", ids, params)
    text, choice, steps = RequestText(engine.tokenizer, params), Choice(), 0
    while not text.is_finished:
        for raw in engine.step():
            out = text.process(raw)
            if out is not None:
                choice.tokens.extend(out.tokens)
                choice.finished, choice.finish_reason = out.finished, out.finish_reason
        steps += 1
        assert steps < 100
    if text.needs_abort:
        engine.abort("s")
    while engine.has_unfinished():
        engine.step()
    engine.check_integrity()
    assert engine.num_running == 0
    return choice


def assert_no_leak(choice, stops, final: str) -> None:
    """Every streamed prefix is a prefix of the final text, which holds no stop string."""
    text = ""
    for tok in choice.tokens:
        text += tok.text
        assert final.startswith(text), f"streamed {text!r} is not a prefix of {final!r}"
        assert not any(s in text for s in stops), f"stop string leaked in {text!r}"
    assert text == final


def test_stop_string_spanning_tokens_is_cut(default_engine):
    free = run_stop(default_engine, ())
    assert free.text.startswith(" 4, 5, 6, 7, 8"), free.text  # the model's greedy continuation
    assert free.text == default_engine.tokenizer.decode(free.token_ids, skip_special_tokens=True)
    choice = run_stop(default_engine, ("7, 8",))
    assert choice.finish_reason == FinishReason.STOP
    assert_no_leak(choice, ("7, 8",), " 4, 5, 6, ")
    # stopped on the token that completed the stop string, not later
    texts = [t.text for t in free.tokens]
    stop_at = next(i for i in range(len(texts)) if "7, 8" in "".join(texts[: i + 1]))
    assert choice.token_ids == free.token_ids[: stop_at + 1]


def test_held_back_text_is_released_at_length_finish(default_engine):
    # " 4, 5, 6, 7, " ends with "7, ", a prefix of the stop: held back, then flushed at the end
    choice = run_stop(default_engine, ("7, 9",), max_tokens=13)
    assert choice.finish_reason == FinishReason.LENGTH
    assert_no_leak(choice, ("7, 9",), " 4, 5, 6, 7, ")


def test_absent_stop_string_changes_nothing(default_engine):
    free = run_stop(default_engine, (), max_tokens=8)
    choice = run_stop(default_engine, ("zebra",), max_tokens=8)
    assert choice.finish_reason == FinishReason.LENGTH
    assert choice.token_ids == free.token_ids and choice.text == free.text


def test_earliest_of_several_stop_strings_wins(default_engine):
    # greedy first token is " Paris": "Pa" occurs before "is"; list order must not matter
    for stops in [("Pa", "is"), ("is", "Pa")]:
        choice = run_stop(default_engine, stops, max_tokens=4, prompt="The capital of France is")
        assert choice.finish_reason == FinishReason.STOP
        assert_no_leak(choice, stops, " ")


def test_outputs_after_a_stop_are_dropped_and_counts_cut(default_engine):
    """Tokens the engine made after the stop (before it saw the abort) never reach the client,
    also when they arrive in the same output as the stopping token."""
    from server.engine import RequestOutput, TokenOutput

    tok = default_engine.tokenizer
    ids = tok(" 4, 5, 6", add_special_tokens=False)["input_ids"]
    params = SamplingParams(max_tokens=20, stop=(", 5",))
    text = RequestText(tok, params)
    out = text.process(RequestOutput("r", 0, [TokenOutput(i, "") for i in ids], False, None, 3, 9))
    assert out.finished and out.finish_reason == FinishReason.STOP
    assert "".join(t.text for t in out.tokens) == " 4"
    assert out.num_visible_tokens == 9 - (len(ids) - len(out.tokens))
    assert text.is_finished and text.needs_abort
    assert text.process(RequestOutput("r", 0, [TokenOutput(ids[0], "")], False)) is None


def test_incomplete_utf8_waits_for_the_next_token():
    from tests.support import byte_tokenizer

    tok = byte_tokenizer()
    detok = Detokenizer(tok, ())
    ids = tok("é!", add_special_tokens=False)["input_ids"]  # two byte tokens, then "!"
    assert len(ids) == 3
    assert [detok.append(i) for i in ids] == [("", False), ("é", False), ("!", False)]
