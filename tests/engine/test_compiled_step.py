"""`--compile on`: the decode step's network through torch.compile (attention and packed linears
as opaque ops; static graphs for the `compile_sizes` row counts, eager otherwise) gives the eager
engine's tokens, thoughts, log-probs and mixing weights, in a batch where requests think and not,
join midway and finish at different steps; steps of every compiled size ran compiled, and none
waited for a compile."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from server.engine import SamplingParams
from server.engine.compiled import CompiledDecode
from tests.engine.engine_support import (
    make_engine,
    prompt_ids,
    run_steps,
    run_to_completion,
    tiny_model,
)
from tests.engine.test_engine_thoughts import assert_same, signature, thinking

REQUESTS = [
    (prompt_ids(9, seed=41), thinking(6, 3, K=2, seed=11)),
    (
        prompt_ids(5, seed=42),
        SamplingParams(max_tokens=9, temperature=1.0, seed=12, ignore_eos=True, logprobs=1),
    ),
    (prompt_ids(14, seed=43), thinking(4, 2, K=1, seed=13)),
]


def run(engine) -> dict:
    results = {}
    engine.add_request("r0", *REQUESTS[0])
    engine.add_request("r1", *REQUESTS[1])
    run_steps(engine, 4, results)  # r2 joins while the others are mid-thought
    engine.add_request("r2", *REQUESTS[2])
    run_to_completion(engine, results)
    assert engine.cache.num_used == 0
    return {key: signature(choice) for key, choice in results.items()}


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", heads_seed=5)


@pytest.mark.slow  # compiling from a cold cache takes ~35 s on 2 cores: `make test-slow`
def test_compiled_step_equals_eager(model, monkeypatch):
    eager = run(make_engine(model))
    calls = []  # row counts of the steps that ran a compiled graph
    original = CompiledDecode.run

    def counting(self, ids, *rest):
        if ids.shape[0] in self.sizes:
            calls.append(ids.shape[0])
        return original(self, ids, *rest)

    monkeypatch.setattr(CompiledDecode, "run", counting)
    engine = make_engine(model, compile="on", compile_sizes=(1, 2))
    assert engine.runner.compiled is not None
    graphs = counters["stats"]["unique_graphs"]
    compiled = run(engine)
    assert counters["stats"]["unique_graphs"] == graphs, "a request waited for a compile"
    assert eager.keys() == {("r0", 0), ("r1", 0), ("r2", 0)}
    assert_same_runs(compiled, eager)
    # r1 finishes last, alone (one row) for its last steps; two rows occur as requests think
    assert set(calls) == {1, 2}, calls


def test_compile_settings_are_checked():
    with pytest.raises(ValueError, match="compile must be one of"):
        make_engine(tiny_model("llama"), compile="yes")
    with pytest.raises(ValueError, match="compile_sizes must be row counts"):
        make_engine(tiny_model("llama"), compile="on", compile_sizes=(0,))


@pytest.mark.slow  # four compiles
def test_engines_on_different_models_in_one_process_each_compile_their_own(model):
    """torch.compile caches by code object: a second engine, on other weights or another
    architecture, must not replay the first one's graph."""
    make_engine(model, compile="on", compile_sizes=(1,))  # compiled first, kept alive
    other = tiny_model("llama", heads_seed=6)
    with torch.no_grad():
        for p in other.backbone.parameters():
            p.mul_(1.25)
    qwen = tiny_model("qwen2", heads_seed=7)  # biases in q/k/v: another graph
    for m in (other, qwen):
        compiled = make_engine(m, compile="on", compile_sizes=(1,))
        assert_same_runs(run(compiled), run(make_engine(m)))


def assert_same_runs(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert_same(got[key], want[key])
