"""AsyncEngine: the engine on its background thread, driven from asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.engine import AsyncEngine, EngineConfig, FinishReason, SamplingParams, ThoughtParams
from tests.engine.engine_support import make_engine, prompt_ids, tiny_model

# 34 model steps per visible token: a 200-token request runs for seconds, so that an abort
# or a shutdown reaches it while it runs, even on a fast CPU
SLOW = ThoughtParams(enabled=True, num_tokens=32)


@pytest.fixture
def async_engine():
    engine = make_engine(tiny_model("llama", heads_seed=11), max_num_seqs=2, max_thought_tokens=32)
    ae = AsyncEngine(EngineConfig(model="test"), engine=engine)
    ae.start()
    yield ae
    ae.shutdown()


async def drain(ae, request_id, prompt, params):
    outputs = [out async for out in ae.generate(request_id, prompt, params)]
    assert outputs and outputs[-1].finished
    assert all(not o.finished for o in outputs[:-1])
    return [t.token_id for o in outputs for t in o.tokens], outputs[-1].finish_reason


async def wait_until(predicate, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "timed out"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def test_concurrent_generate_calls_complete(async_engine):
    thinking = SamplingParams(
        max_tokens=6,
        temperature=1.0,
        seed=3,
        ignore_eos=True,
        thoughts=ThoughtParams(enabled=True, num_tokens=2),
    )
    plain = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)

    async def main():
        return await asyncio.gather(
            drain(async_engine, "a", prompt_ids(5, seed=1), thinking),
            drain(async_engine, "b", prompt_ids(8, seed=2), plain),
        )

    (a, reason_a), (b, reason_b) = asyncio.run(main())
    assert len(a) == 6 and len(b) == 9
    assert reason_a == reason_b == FinishReason.LENGTH
    # the same requests through the synchronous engine give the same tokens (seeded / greedy)
    engine = async_engine.engine
    async_engine.shutdown()
    engine.add_request("a", prompt_ids(5, seed=1), thinking)
    engine.add_request("b", prompt_ids(8, seed=2), plain)
    tokens = {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.request_id, []).extend(t.token_id for t in out.tokens)
    assert tokens == {"a": a, "b": b}


def test_breaking_out_of_the_iterator_aborts_and_frees_the_slot(async_engine, monkeypatch):
    engine, aborted = async_engine.engine, []
    cache, abort = engine.cache, engine.abort
    monkeypatch.setattr(engine, "abort", lambda rid: (aborted.append(rid), abort(rid)))
    long = SamplingParams(
        max_tokens=200,
        temperature=1.0,
        seed=4,
        ignore_eos=True,
        thoughts=SLOW,
    )

    async def main():
        received = 0
        async for out in async_engine.generate("long", prompt_ids(6, seed=3), long):
            received += len(out.tokens)
            if received >= 2:
                break  # the dropped generator is closed, which aborts the request
        await wait_until(lambda: cache.num_used == 0)
        assert aborted == ["long"]  # freed by the abort, not by finishing its 200 tokens
        assert not engine.requests
        # the freed slot serves new requests
        return await drain(
            async_engine,
            "next",
            prompt_ids(4, seed=5),
            SamplingParams(max_tokens=3, temperature=0, ignore_eos=True),
        )

    tokens, reason = asyncio.run(main())
    assert len(tokens) == 3 and reason == FinishReason.LENGTH


def test_explicit_abort_finishes_the_stream(async_engine):
    long = SamplingParams(max_tokens=200, temperature=1.0, seed=4, ignore_eos=True, thoughts=SLOW)

    async def main():
        outputs = []
        async for out in async_engine.generate("x", prompt_ids(6, seed=3), long):
            outputs.append(out)
            if len(outputs) == 2:
                async_engine.abort("x")
        return outputs

    outputs = asyncio.run(main())
    assert outputs[-1].finished and outputs[-1].finish_reason == FinishReason.ABORT
    assert sum(len(o.tokens) for o in outputs) < 200
    assert async_engine.engine.cache.num_used == 0


def test_score_and_refusals(async_engine):
    ids = prompt_ids(7, seed=6)

    async def main():
        scored = await async_engine.score(ids, ThoughtParams(enabled=True, num_tokens=2), 0, seed=1)
        with pytest.raises(ValueError):  # validated before anything is queued
            async for _ in async_engine.generate("bad", [], SamplingParams()):
                pass
        return scored

    scored = asyncio.run(main())
    assert scored.token_ids == ids and scored.logprobs[0] is None
    assert len(scored.logprobs) == len(ids) and all(x < 0 for x in scored.logprobs[1:])
    assert (
        scored.logprobs
        == async_engine.engine.score(
            ids, ThoughtParams(enabled=True, num_tokens=2), 0, seed=1
        ).logprobs
    )


def test_shutdown_ends_the_thread_and_aborts_running_requests(async_engine):
    thread = async_engine._thread
    assert thread is not None and thread.is_alive()
    long = SamplingParams(max_tokens=200, temperature=1.0, seed=4, ignore_eos=True, thoughts=SLOW)

    async def main():
        stream = async_engine.generate("cut", prompt_ids(6, seed=3), long)
        first = await anext(stream)
        await asyncio.to_thread(async_engine.shutdown)
        rest = [out async for out in stream]
        return [first, *rest]

    outputs = asyncio.run(main())
    assert not thread.is_alive() and async_engine._thread is None
    assert outputs[-1].finished and outputs[-1].finish_reason == FinishReason.ABORT
    assert async_engine.engine.cache.num_used == 0
