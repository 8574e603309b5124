"""Parallel scoring (spec §3.4: every position's thought in L+2 batched passes) equals the
per-position no-cache reference fed the same thoughts."""

from __future__ import annotations

import pytest
import torch

from quietstar import reference
from quietstar.parallel import parallel_thought_forward
from server.engine import ThoughtParams
from tests.engine.engine_support import (
    assert_close,
    assert_tensors_close,
    make_engine,
    prompt_ids,
    tiny_model,
)


def reproduce_thoughts(model, ids: list[int], L: int, K: int, seed: int) -> torch.Tensor:
    """The thoughts Engine.score samples: same call, same generator seed -> (K, T, L)."""
    gen = torch.Generator(device=model.device).manual_seed(seed)
    x = torch.tensor([ids], device=model.device).expand(K, -1)
    with torch.no_grad():
        return parallel_thought_forward(model, x, L, n_talk=1, generator=gen).thought_ids


def base_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i+1] | ids[:i+1]) without thoughts, one no-cache forward per prefix."""
    return torch.stack(
        [
            torch.log_softmax(reference.base_logits(model, ids[: i + 1]), -1)[ids[i + 1]]
            for i in range(len(ids) - 1)
        ]
    )


def as_tensor(logprobs: list[float | None]) -> torch.Tensor:
    assert logprobs[0] is None, "nothing predicts the first token"
    assert all(x is not None for x in logprobs[1:])
    return torch.tensor(logprobs[1:], dtype=torch.float32)


@pytest.mark.parametrize("L", [1, 3])
def test_score_matches_per_position_reference(L):
    model = tiny_model("llama", heads_seed=5)
    engine = make_engine(model)
    ids = prompt_ids(14, seed=40 + L)
    out = engine.score(ids, ThoughtParams(enabled=True, num_tokens=L, num_thoughts=1), 3, seed=99)
    assert out.token_ids == ids
    assert out.num_thought_tokens == L * len(ids)
    thoughts = reproduce_thoughts(model, ids, L, 1, seed=99)[0]  # (T, L)
    assert thoughts.shape == (len(ids), L)
    expected = reference.score_per_position(model, ids, thoughts.tolist())
    got = as_tensor(out.logprobs)
    assert_tensors_close(got, expected, 1e-4)
    # The thoughts matter here (random head), so the match is not the base model's by accident.
    assert float((expected - base_logprobs(model, ids)).abs().max()) > 1e-3
    # top_logprobs: 3 entries per position, sorted, and the scored token's value is consistent.
    assert out.top_logprobs[0] is None and len(out.top_logprobs) == len(ids)
    for top in out.top_logprobs[1:]:
        values = [v for _, v in top]
        assert len(top) == 3 and values == sorted(values, reverse=True)


def test_score_with_two_thoughts_averages_probabilities():
    model = tiny_model("llama", heads_seed=6)
    engine = make_engine(model)
    ids, L = prompt_ids(9, seed=50), 2
    out = engine.score(ids, ThoughtParams(enabled=True, num_tokens=L, num_thoughts=2), seed=3)
    assert out.num_thought_tokens == 2 * L * len(ids)
    thoughts = reproduce_thoughts(model, ids, L, 2, seed=3)  # (K, T, L)
    expected = []
    for i in range(len(ids) - 1):
        probs = torch.stack(
            [
                torch.softmax(
                    reference.thought_aided_logits(
                        model, ids[: i + 1], thoughts[k, i].tolist()
                    ).logits,
                    -1,
                )
                for k in range(2)
            ]
        ).mean(0)
        expected.append(probs[ids[i + 1]].log())
    assert_tensors_close(as_tensor(out.logprobs), torch.stack(expected), 1e-4)


def test_score_without_thoughts_is_base_log_softmax():
    model = tiny_model("qwen2", heads_seed=7)
    engine = make_engine(model)
    ids = prompt_ids(12, seed=60)
    out = engine.score(ids, ThoughtParams(enabled=False), top_logprobs=2)
    assert out.num_thought_tokens == 0
    assert_tensors_close(as_tensor(out.logprobs), base_logprobs(model, ids), 1e-4)
    for i, top in enumerate(out.top_logprobs[1:]):
        full = torch.log_softmax(reference.base_logits(model, ids[: i + 1]), -1)
        values, idx = full.topk(2)
        assert [t for t, _ in top] == idx.tolist()
        for (_, got), want in zip(top, values.tolist(), strict=True):
            assert_close(got, want, 1e-4, f"top logprob at {i}")


def test_zero_head_thought_scores_equal_base_scores():
    model = tiny_model("llama")  # fresh heads: w == 0
    engine = make_engine(model)
    ids = prompt_ids(10, seed=70)
    base = as_tensor(engine.score(ids, ThoughtParams(enabled=False)).logprobs)
    thought = as_tensor(
        engine.score(
            ids, ThoughtParams(enabled=True, num_tokens=2, num_thoughts=2), seed=1
        ).logprobs
    )
    assert_tensors_close(thought, base, 1e-5)


def test_score_is_reproducible_with_a_seed():
    model = tiny_model("llama", heads_seed=8)
    engine = make_engine(model)
    ids = prompt_ids(8, seed=80)
    params = ThoughtParams(enabled=True, num_tokens=2)
    first, second = (engine.score(ids, params, seed=5).logprobs for _ in range(2))
    assert first == second
