"""Request lifecycle: admission when slots free up, aborts (running mid-thought, waiting, unknown),
finish reasons (length, stop token id, abort; stop strings: test_output_processor.py), bookkeeping after all of it, and the
validation that refuses requests the engine cannot serve."""

from __future__ import annotations

import pytest

from server.engine import FinishReason, SamplingParams, ThoughtParams
from tests.engine.engine_support import (
    make_engine,
    prompt_ids,
    run_steps,
    run_to_completion,
    tiny_model,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", heads_seed=9)


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **kw)


def thinking(max_tokens: int, L: int, K: int = 1, seed: int = 0) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0,
        seed=seed,
        ignore_eos=True,
        thoughts=ThoughtParams(enabled=True, num_tokens=L, num_thoughts=K),
    )


def assert_idle(engine) -> None:
    engine.check_integrity()
    assert engine.cache.num_used == 0
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert not engine.has_unfinished() and not engine.requests


# ---------------------------------------------------------------------- admission and aborts


def test_more_requests_than_slots_all_finish(model):
    engine = make_engine(model, max_num_seqs=2)
    lengths = {f"r{i}": 3 + i for i in range(5)}
    for i, (rid, n) in enumerate(lengths.items()):
        params = thinking(n, L=1 + i % 3, K=1 + i % 2, seed=i) if i % 2 else greedy(n)
        engine.add_request(rid, prompt_ids(4 + 3 * i, seed=i), params)
    assert engine.num_waiting == 5 and engine.cache.num_used == 0
    results, peak = {}, 0
    while engine.has_unfinished():
        run_steps(engine, 1, results)
        peak = max(peak, engine.num_running)
        assert engine.cache.num_used == engine.num_running <= 2
    assert peak == 2
    assert_idle(engine)
    for rid, n in lengths.items():
        choice = results[rid, 0]
        assert choice.finish_reason == FinishReason.LENGTH
        assert len(choice.tokens) == n and choice.num_outputs_after_finish == 0


def test_aborts_running_waiting_and_unknown(model):
    engine = make_engine(model, max_num_seqs=2)
    engine.add_request("thinker", prompt_ids(7, seed=1), thinking(50, L=4, K=2, seed=1))
    engine.add_request("plain", prompt_ids(5, seed=2), greedy(6))
    engine.add_request("waiter", prompt_ids(6, seed=3), greedy(6))
    engine.add_request("late", prompt_ids(9, seed=4), thinking(3, L=2, seed=4))
    results = {}
    run_steps(engine, 3, results)
    (thinker,) = engine.requests["thinker"]
    assert thinker.thought_step > 0, "the thinker should be mid-thought"
    assert engine.num_waiting == 2 and engine.cache.num_used == 2

    engine.abort("no-such-request")  # a no-op
    engine.check_integrity()
    assert engine.num_waiting == 2 and engine.cache.num_used == 2

    engine.abort("thinker")  # mid-thought: its slot is freed by the next step
    engine.abort("waiter")  # never admitted
    assert engine.num_waiting == 1
    run_steps(engine, 1, results)
    assert results["thinker", 0].finish_reason == FinishReason.ABORT
    assert results["waiter", 0].finish_reason == FinishReason.ABORT
    assert results["waiter", 0].tokens == []
    assert engine.num_waiting == 0 and engine.cache.num_used == 2  # "late" took the freed slot
    assert thinker.slot is None

    run_to_completion(engine, results)
    assert_idle(engine)
    assert results["plain", 0].finish_reason == FinishReason.LENGTH
    assert len(results["plain", 0].tokens) == 6
    assert results["late", 0].finish_reason == FinishReason.LENGTH
    assert len(results["late", 0].tokens) == 3
    assert all(c.num_outputs_after_finish == 0 for c in results.values())
    engine.abort("thinker")  # aborting a finished, reported request is a no-op too
    assert not engine.has_unfinished()


def test_abort_every_choice_of_an_n2_request(model):
    engine = make_engine(model, max_num_seqs=4)
    engine.add_request(
        "pair",
        prompt_ids(6, seed=5),
        SamplingParams(
            max_tokens=40,
            temperature=1.0,
            seed=5,
            ignore_eos=True,
            n=2,
            thoughts=ThoughtParams(enabled=True, num_tokens=3),
        ),
    )
    results = {}
    run_steps(engine, 4, results)
    assert engine.cache.num_used == 2
    engine.abort("pair")
    run_to_completion(engine, results)
    assert_idle(engine)
    assert [results["pair", i].finish_reason for i in range(2)] == [FinishReason.ABORT] * 2


def test_max_tokens_zero_finishes_without_a_slot(model):
    engine = make_engine(model)
    engine.add_request("zero", prompt_ids(5, seed=6), greedy(0))
    results = run_to_completion(engine)
    assert (
        results["zero", 0].finish_reason == FinishReason.LENGTH and results["zero", 0].tokens == []
    )
    assert_idle(engine)


def test_stop_token_ids(model):
    engine = make_engine(model)
    prompt = prompt_ids(8, seed=7)
    engine.add_request("free", prompt, greedy(12))
    free = run_to_completion(engine)["free", 0].token_ids
    # the first token (from the fourth on) not seen before: stopping there is unambiguous
    j = next(i for i in range(3, len(free)) if free[i] not in free[:i])
    engine.add_request("stopped", prompt, greedy(12, stop_token_ids=(free[j],)))
    stopped = run_to_completion(engine)["stopped", 0]
    assert stopped.finish_reason == FinishReason.STOP
    assert stopped.token_ids == free[: j + 1]
    assert_idle(engine)


# ---------------------------------------------------------------------- validation


@pytest.fixture(scope="module")
def small_engine(model):
    return make_engine(model, max_model_len=32, max_thought_tokens=4, max_num_thoughts=2)


def refused(engine, prompt, params, *fragments: str) -> None:
    with pytest.raises(ValueError) as info:
        engine.validate(prompt, params)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value}"
    with pytest.raises(ValueError):
        engine.add_request("refused", prompt, params)
    assert not engine.requests and engine.num_waiting == 0


def test_prompt_longer_than_the_context_is_refused(small_engine):
    refused(small_engine, [5] * 40, greedy(1), "32", "40")
    refused(small_engine, [5] * 30, greedy(5), "32", "30")  # prompt fits, prompt + max_tokens not
    small_engine.validate([5] * 27, greedy(5))  # exactly at the limit is fine
    with pytest.raises(ValueError) as info:
        small_engine.score([5] * 33, ThoughtParams(enabled=False))
    assert "32" in str(info.value) and "33" in str(info.value)


def test_thought_limits_are_enforced(small_engine):
    too_long = SamplingParams(thoughts=ThoughtParams(enabled=True, num_tokens=5))
    refused(small_engine, [5, 6], too_long, "5", "4")
    # the checkpoint's default (5 sampled tokens) is above this engine's maximum of 4 too
    refused(small_engine, [5, 6], SamplingParams(thoughts=ThoughtParams(enabled=True)), "4")
    too_many = SamplingParams(thoughts=ThoughtParams(enabled=True, num_tokens=2, num_thoughts=3))
    refused(small_engine, [5, 6], too_many, "3", "2")
    # disabled thoughts are not checked against the limits
    small_engine.validate(
        [5, 6], SamplingParams(max_tokens=4, thoughts=ThoughtParams(num_tokens=9, num_thoughts=9))
    )
    small_engine.validate(
        [5, 6],
        SamplingParams(
            max_tokens=4, thoughts=ThoughtParams(enabled=True, num_tokens=4, num_thoughts=2)
        ),
    )


def test_empty_and_out_of_vocabulary_prompts_are_refused(small_engine, model):
    refused(small_engine, [], greedy(1), "empty")
    refused(small_engine, [5, model.vocab_size], greedy(1), str(model.vocab_size))
    refused(small_engine, [-1, 5], greedy(1))


def test_bad_sampling_and_thought_params_are_refused():
    for kw in [
        dict(max_tokens=-1),
        dict(temperature=-0.5),
        dict(top_p=0),
        dict(top_k=-1),
        dict(min_p=1.5),
        dict(n=0),
        dict(logprobs=-1),
    ]:
        with pytest.raises(ValueError):
            SamplingParams(**kw)
    for kw in [dict(num_tokens=-1), dict(num_thoughts=0), dict(temperature=0)]:
        with pytest.raises(ValueError):
            ThoughtParams(**kw)


def test_duplicate_request_id_is_refused(model):
    engine = make_engine(model)
    engine.add_request("dup", [5, 6, 7], greedy(3))
    with pytest.raises(ValueError, match="dup"):
        engine.add_request("dup", [5, 6, 7], greedy(3))
    run_to_completion(engine)
    assert_idle(engine)


def test_score_validates_like_generation(small_engine):
    with pytest.raises(ValueError, match="empty"):
        small_engine.score([], ThoughtParams(enabled=False))
    with pytest.raises(ValueError, match="4"):
        small_engine.score([5, 6, 7], ThoughtParams(enabled=True, num_tokens=50))
    with pytest.raises(ValueError, match="2"):
        small_engine.score([5, 6, 7], ThoughtParams(enabled=True, num_tokens=1, num_thoughts=20))
    out = small_engine.score(
        [5, 6, 7], ThoughtParams(enabled=True, num_tokens=4, num_thoughts=2), seed=0
    )
    assert out.num_thought_tokens == 4 * 2 * 3
