"""Model forwards per visible token: a thinking sequence costs L + 2 decode forwards per visible
token (base fused with START, L thought tokens, END; spec §4.4), a non-thinking one costs one,
alone or in a mixed batch, with one or several parallel thoughts."""

from __future__ import annotations

import pytest

from server.engine import SamplingParams, ThoughtParams
from tests.engine.engine_support import make_engine, prompt_ids, tiny_model


def params(max_tokens: int, L: int | None, K: int = 1) -> SamplingParams:
    """L None: thoughts off."""
    thoughts = ThoughtParams(enabled=L is not None, num_tokens=L, num_thoughts=K)
    return SamplingParams(
        max_tokens=max_tokens, temperature=1.0, seed=3, ignore_eos=True, thoughts=thoughts
    )


def forwards_per_token(engine, requests: dict[str, SamplingParams]) -> dict[str, list[int]]:
    """Decode forwards between consecutive visible tokens of each request, seen at step
    granularity (the first entry counts from the step that prefilled it)."""
    forwards = 0
    decode = engine.runner.decode

    def counting_decode(*args, **kwargs):
        nonlocal forwards
        forwards += 1
        return decode(*args, **kwargs)

    engine.runner.decode = counting_decode
    for i, (rid, p) in enumerate(requests.items()):
        engine.add_request(rid, prompt_ids(5 + 3 * i, seed=i), p)
    last = {rid: 0 for rid in requests}
    gaps = {rid: [] for rid in requests}
    while engine.has_unfinished():
        for out in engine.step():
            for _ in out.tokens:
                gaps[out.request_id].append(forwards - last[out.request_id])
                last[out.request_id] = forwards
        engine.check_integrity()
    return gaps


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", heads_seed=5)


@pytest.mark.parametrize("L", [0, 1, 4])
@pytest.mark.parametrize("K", [1, 3])
def test_alone_a_visible_token_costs_l_plus_2_forwards(model, L, K):
    gaps = forwards_per_token(make_engine(model), {"r": params(6, L, K)})
    assert gaps["r"] == [L + 2] * 6


def test_mixed_batch_each_sequence_keeps_its_own_cost(model):
    requests = {
        "off": params(20, None),
        "l2k1": params(5, 2, 1),
        "l3k3": params(4, 3, 3),
        "l0k2": params(7, 0, 2),
    }
    gaps = forwards_per_token(make_engine(model), requests)
    # Thoughts off: the first step emits the prefill's token and the first decode's together.
    assert gaps["off"] == [1, 0] + [1] * 18
    assert gaps["l2k1"] == [4] * 5
    assert gaps["l3k3"] == [5] * 4
    assert gaps["l0k2"] == [2] * 7
