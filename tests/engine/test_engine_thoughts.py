"""Thoughts on: every visible token's log-prob equals the no-cache reference recomputed from the
prefix and the thought the engine sampled (spec §4.4), and a request's tokens and thoughts do not
depend on what else is batched with it."""

from __future__ import annotations

import pytest
import torch

from quietstar import reference
from server.engine import FinishReason, SamplingParams, ThoughtParams, attention
from tests.engine.engine_support import (
    assert_close,
    make_engine,
    prompt_ids,
    run_steps,
    run_to_completion,
    tiny_model,
)


def thinking(max_tokens: int, L: int, K: int = 1, seed: int = 0, **kw) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0,
        seed=seed,
        ignore_eos=True,
        logprobs=0,
        thoughts=ThoughtParams(enabled=True, num_tokens=L, num_thoughts=K, include=True),
        **kw,
    )


def generate_one(model, prompt, params, **engine_overrides):
    engine = make_engine(model, **engine_overrides)
    engine.add_request("r", prompt, params)
    results = run_to_completion(engine)
    assert engine.cache.num_used == 0
    choice = results["r", 0]
    assert choice.finished and choice.finish_reason == FinishReason.LENGTH
    assert len(choice.tokens) == params.max_tokens
    return choice


@pytest.mark.parametrize("L", [0, 1, 3])
def test_thought_logprobs_match_reference(L):
    model = tiny_model("llama", heads_seed=1)
    prompt = prompt_ids(11, seed=L)
    choice = generate_one(model, prompt, thinking(6, L, seed=100 + L))
    prefix = list(prompt)
    ws = []
    for i, tok in enumerate(choice.tokens):
        assert tok.thought_ids is not None and len(tok.thought_ids) == 1
        thought = tok.thought_ids[0]
        assert len(thought) == L
        assert all(0 <= t < model.vocab_size for t in thought)
        assert not set(thought) & set(model.masked_token_ids.tolist()), "meta-token sampled"
        ref = reference.thought_aided_logits(model, prefix, thought)
        expected = torch.log_softmax(ref.logits, dim=-1)[tok.token_id]
        assert_close(tok.logprob, expected, 1e-4, f"position {i} logprob")
        assert tok.mixing_weights is not None and len(tok.mixing_weights) == 1
        assert_close(tok.mixing_weights[0], ref.w.item(), 1e-4, f"position {i} w")
        ws.append(tok.mixing_weights[0])
        prefix.append(tok.token_id)
    assert any(abs(w) > 1e-3 for w in ws), "the mixing head is not exercised (w == 0)"


@pytest.mark.parametrize("kernel", ["fused", "math"])
def test_three_parallel_thoughts_average_probabilities(kernel, monkeypatch):
    if kernel == "math":  # the plain-ops attention other devices use, here on the CPU
        monkeypatch.setattr(attention, "sdpa_lse", attention.sdpa_lse_math)
    model = tiny_model("llama", heads_seed=2)
    prompt = prompt_ids(8, seed=21)
    choice = generate_one(model, prompt, thinking(5, 2, K=3, seed=7))
    prefix = list(prompt)
    for i, tok in enumerate(choice.tokens):
        assert len(tok.thought_ids) == 3 and all(len(t) == 2 for t in tok.thought_ids)
        refs = [reference.thought_aided_logits(model, prefix, t) for t in tok.thought_ids]
        probs = torch.stack([torch.softmax(r.logits, dim=-1) for r in refs]).mean(0)
        assert_close(tok.logprob, probs[tok.token_id].log(), 1e-4, f"position {i} logprob")
        assert len(tok.mixing_weights) == 3
        for k, r in enumerate(refs):
            assert_close(tok.mixing_weights[k], r.w.item(), 1e-4, f"position {i} w[{k}]")
        prefix.append(tok.token_id)
    # The three thoughts are sampled independently (equal everywhere would hint at a shared row).
    assert any(len({tuple(t) for t in tok.thought_ids}) > 1 for tok in choice.tokens)


def test_thoughts_off_logprobs_are_base_logprobs():
    model = tiny_model("llama", heads_seed=3)
    prompt = prompt_ids(10, seed=5)
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=1, ignore_eos=True, logprobs=2)
    choice = generate_one(model, prompt, params)
    prefix = list(prompt)
    for tok in choice.tokens:
        assert tok.thought_ids is None and tok.mixing_weights is None
        expected = torch.log_softmax(reference.base_logits(model, prefix), dim=-1)
        assert_close(tok.logprob, expected[tok.token_id], 1e-4, "logprob")
        assert len(tok.top_logprobs) == 2
        top_values, top_ids = expected.topk(2)
        assert [i for i, _ in tok.top_logprobs] == top_ids.tolist()
        for (_, got), want in zip(tok.top_logprobs, top_values.tolist(), strict=True):
            assert_close(got, want, 1e-4, "top logprob")
        prefix.append(tok.token_id)


# ---------------------------------------------------------------------- batch invariance

TARGET_PROMPT = prompt_ids(9, seed=31)
TARGET = thinking(7, 3, K=2, seed=1234)
OTHERS = [  # (prompt, params): different lengths and thought settings
    (
        prompt_ids(4, seed=32),
        SamplingParams(max_tokens=12, temperature=1.0, seed=5, ignore_eos=True, logprobs=0),
    ),
    (prompt_ids(17, seed=33), thinking(6, 2, K=2, seed=6)),
    (prompt_ids(6, seed=34), thinking(5, 4, K=1, seed=7)),
]


def signature(choice):
    numbers = [(t.logprob, *(t.mixing_weights or ())) for t in choice.tokens]
    return choice.token_ids, choice.thoughts, numbers


def assert_same(got, alone, atol: float = 1e-5) -> None:
    """Token and thought ids exactly; log-probs and mixing weights to `atol` (batching may change
    the float summation order). The near-uniform tiny model rarely flips a sampled token over a
    small error, so the probabilities are what catch attention over the wrong keys."""
    tokens, thoughts, numbers = got
    assert (tokens, thoughts) == alone[:2]
    assert len(numbers) == len(alone[2])
    for i, (a, b) in enumerate(zip(numbers, alone[2], strict=True)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y, atol, f"token {i}")


@pytest.fixture(scope="module")
def invariance_model():
    return tiny_model("llama", heads_seed=4)


@pytest.fixture(scope="module")
def alone(invariance_model):
    choice = generate_one(invariance_model, TARGET_PROMPT, TARGET)
    assert all(len(t) == 2 and all(len(x) == 3 for x in t) for t in choice.thoughts)
    return signature(choice)


def test_batched_from_the_start_equals_alone(invariance_model, alone):
    engine = make_engine(invariance_model)
    for j, (prompt, params) in enumerate(OTHERS):
        engine.add_request(f"other{j}", prompt, params)
    engine.add_request("target", TARGET_PROMPT, TARGET)
    results = run_to_completion(engine)
    assert_same(signature(results["target", 0]), alone)
    assert all(c.finished for c in results.values()) and engine.cache.num_used == 0
    for j, (prompt, params) in enumerate(OTHERS):  # the others are batch-invariant too
        assert_same(
            signature(results[f"other{j}", 0]),
            signature(generate_one(invariance_model, prompt, params)),
        )


def test_target_joining_midway_equals_alone(invariance_model, alone):
    engine = make_engine(invariance_model)
    results = {}
    for j, (prompt, params) in enumerate(OTHERS):
        engine.add_request(f"other{j}", prompt, params)
    run_steps(engine, 5, results)  # the others are mid-thought when the target joins
    engine.add_request("target", TARGET_PROMPT, TARGET)
    run_to_completion(engine, results)
    assert_same(signature(results["target", 0]), alone)


def test_others_joining_and_leaving_midway_equals_alone(invariance_model, alone):
    engine = make_engine(invariance_model, max_num_seqs=3)
    results = {}
    engine.add_request("other0", *OTHERS[0])
    engine.add_request("other1", *OTHERS[1])
    engine.add_request("target", TARGET_PROMPT, TARGET)  # the last slot
    run_steps(engine, 3, results)
    (seq,) = engine.requests["target"]
    assert seq.slot == 2 and seq.thought_step > 0, "the target should be mid-thought"
    engine.abort("other0")  # frees slot 0: the target's prefix and thought K/V move down into it
    run_steps(engine, 1, results)
    assert seq.slot == 0
    engine.add_request("other2", *OTHERS[2])  # joins while the target is still decoding
    run_to_completion(engine, results)
    assert_same(signature(results["target", 0]), alone)
    assert results["other0", 0].finish_reason == FinishReason.ABORT
    assert results["other2", 0].finish_reason == FinishReason.LENGTH
    assert engine.cache.num_used == 0
