"""Padded (static-shape) decode steps, the shapes a CUDA graph replays: padding never changes a
real row's output, padding rows write only the scratch slot, the buckets are right, and the
`cuda_graphs` setting is validated. The graph capture itself runs only on CUDA (`gpu` mark)."""

from __future__ import annotations

import pytest
import torch

from server.engine import EngineConfig, SamplingParams, ThoughtParams
from server.engine.model_runner import bucket_for, bucket_sizes
from tests.engine.engine_support import (
    make_engine,
    prompt_ids,
    run_steps,
    run_to_completion,
    tiny_model,
)


def thinking(max_tokens: int, L: int, K: int, seed: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0,
        top_p=0.9,
        seed=seed,
        ignore_eos=True,
        logprobs=1,
        thoughts=ThoughtParams(enabled=True, num_tokens=L, num_thoughts=K, include=True),
    )


REQUESTS = [
    (prompt_ids(7, seed=1), thinking(5, 2, 3, seed=1)),
    (
        prompt_ids(4, seed=2),
        SamplingParams(max_tokens=14, temperature=0.8, seed=2, ignore_eos=True, logprobs=0),
    ),
    (prompt_ids(12, seed=3), thinking(4, 3, 1, seed=3)),
    (prompt_ids(5, seed=4), thinking(6, 0, 2, seed=4)),
    (
        prompt_ids(9, seed=5),
        SamplingParams(max_tokens=9, temperature=0, ignore_eos=True, logprobs=0),
    ),
]


def run(model, pad: bool, cuda_graphs: str = "off", device: str = "cpu"):
    """Requests joining while others run and leaving at different times; a slot bucket of 8
    for 5 sequences (max 5 running) pads both slots and columns."""
    engine = make_engine(model, max_num_seqs=5, cuda_graphs=cuda_graphs, device=device)
    engine.runner.pad = pad
    return engine, serve_requests(engine)


def serve_requests(engine) -> dict:
    """REQUESTS on `engine`: three first, the others after four steps, all to completion."""
    results = {}
    for i, (prompt, params) in enumerate(REQUESTS[:3]):
        engine.add_request(f"r{i}", prompt, params)
    run_steps(engine, 4, results)
    for i, (prompt, params) in enumerate(REQUESTS[3:], start=3):
        engine.add_request(f"r{i}", prompt, params)
    run_to_completion(engine, results)
    return results


def test_padding_never_changes_a_real_row():
    """Token and thought ids equal; log-probs and mixing weights to 1e-5 (the padded matmuls
    have other shapes, so the float summation order may differ: 5e-7 seen)."""
    model = tiny_model("llama", heads_seed=6)
    _, plain = run(model, pad=False)
    engine, padded = run(model, pad=True)
    assert engine.runner.buckets == [1, 2, 4, 5]
    assert plain.keys() == padded.keys()
    for key, choice in plain.items():
        other = padded[key]
        assert choice.token_ids == other.token_ids and choice.thoughts == other.thoughts
        for a, b in zip(choice.tokens, other.tokens, strict=True):
            tops_a, tops_b = a.top_logprobs or [], b.top_logprobs or []
            assert [i for i, _ in tops_a] == [i for i, _ in tops_b]
            assert [x for _, x in tops_a] == pytest.approx([x for _, x in tops_b], abs=1e-5)
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
            assert (a.mixing_weights or []) == pytest.approx(b.mixing_weights or [], abs=1e-5)


def test_padding_rows_write_only_the_scratch_slot():
    model = tiny_model("llama", heads_seed=6)
    engine = make_engine(model, max_num_seqs=4)
    engine.runner.pad = True
    engine.add_request("a", prompt_ids(6, seed=8), thinking(3, 2, 2, seed=8))  # 1 slot of 4
    cache = engine.cache
    before = [t.clone() for t in (cache.k, cache.v, cache.tk, cache.tv)]
    run_to_completion(engine)
    after = (cache.k, cache.v, cache.tk, cache.tv)
    for old, new in zip(before, after):
        assert torch.equal(old[:, 1:4], new[:, 1:4]), "a padding row wrote a free slot"
    assert not torch.equal(before[0][:, 4], cache.k[:, 4]), (
        "padding rows should use the scratch slot"
    )
    assert torch.equal(before[2][:, 0, 2:], cache.tk[:, 0, 2:]), "a padding row wrote thought 3+"


@pytest.mark.parametrize(
    ("max_num_seqs", "sizes"),
    [
        (1, [1]),
        (3, [1, 2, 3]),
        (8, [1, 2, 4, 8]),
        (20, [1, 2, 4, 8, 16, 20]),
        (32, [1, 2, 4, 8, 16, 24, 32]),
    ],
)
def test_bucket_sizes(max_num_seqs, sizes):
    assert bucket_sizes(max_num_seqs) == sizes
    for n in range(1, max_num_seqs + 1):
        b = bucket_for(n, sizes)
        assert b >= n and b in sizes and not [s for s in sizes if n <= s < b]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(max_num_seqs + 1, sizes)


def test_cuda_graphs_setting():
    assert not EngineConfig(device="cpu").use_cuda_graphs
    assert EngineConfig(device="cuda:0").use_cuda_graphs
    assert not EngineConfig(device="cuda", cuda_graphs="off").use_cuda_graphs
    with pytest.raises(ValueError, match="cuda_graphs 'on' needs a CUDA device"):
        EngineConfig(device="cpu", cuda_graphs="on")
    with pytest.raises(ValueError, match="cuda_graphs must be one of"):
        EngineConfig(cuda_graphs="yes")


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_on_cuda():
    model = tiny_model("llama", heads_seed=6).to("cuda")
    _, eager = run(model, pad=True, device="cuda")
    engine, graphed = run(model, pad=True, cuda_graphs="on", device="cuda")
    assert engine.runner.graphs.graphs, "no graph was captured"
    for key, choice in eager.items():
        assert choice.token_ids == graphed[key].token_ids
        assert choice.thoughts == graphed[key].thoughts
