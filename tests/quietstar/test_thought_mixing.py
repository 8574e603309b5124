"""Mixing head semantics (spec §2.2–§2.3) and meta-token masking (spec §1.3)."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar.llama import DenseCausalAttention
from quietstar.model import END_THOUGHT, START_THOUGHT
from quietstar.reference import base_logits, thought_aided_logits
from tests.support import DEVICE, randomize_heads

PREFIX = [5, 17, 200, 33, 99, 4]
THOUGHT = [40, 41, 42, 43, 44]
DTYPES = [torch.float32, torch.bfloat16]


def hidden(model, ids: list[list[int]]) -> torch.Tensor:
    x = torch.tensor(ids, device=model.device)
    positions = torch.arange(x.shape[1], device=x.device).expand_as(x)
    with torch.no_grad():
        return model.hidden(x, positions, DenseCausalAttention())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_head_mix_is_base_exactly(tiny_checkpoint, dtype):
    model = quietstar.load(tiny_checkpoint, dtype=dtype, device=DEVICE)
    h_base = hidden(model, [PREFIX])
    h_post = hidden(model, [PREFIX[::-1]])  # any other states: w == 0 must ignore them
    with torch.no_grad():
        mixed, w = model.mix(h_base, h_post)
    assert torch.equal(w, torch.zeros_like(w))
    assert torch.equal(mixed, model.logits(h_base))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_head_reference_is_base_exactly(tiny_checkpoint, dtype):
    model = quietstar.load(
        tiny_checkpoint, dtype=dtype, device=DEVICE
    )  # fresh: no Quiet-STaR tensors
    out = thought_aided_logits(model, PREFIX, THOUGHT)
    assert torch.equal(out.w, torch.zeros_like(out.w))
    assert torch.equal(out.logits, out.base_logits)
    # The thought-free pass over the prefix alone predicts the same token.
    assert int(out.logits.argmax()) == int(base_logits(model, PREFIX).argmax())


def test_nonzero_head_changes_the_prediction(tiny_model):
    randomize_heads(tiny_model)
    out = thought_aided_logits(tiny_model, PREFIX, THOUGHT)
    assert float(out.w.abs()) > 1e-3
    assert not torch.equal(out.logits, out.base_logits)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_meta_tokens_are_masked(tiny_checkpoint, dtype):
    model = quietstar.load(tiny_checkpoint, dtype=dtype, device=DEVICE)
    randomize_heads(model)
    masked = {model.start_thought_id, model.end_thought_id}
    assert set(model.masked_token_ids.tolist()) == masked
    seq = [PREFIX + [START_THOUGHT] + THOUGHT + [END_THOUGHT]]
    h = hidden(model, seq)[0]  # (T, d)
    with torch.no_grad():
        mixed, _ = model.mix(h[len(PREFIX) - 1], h[-1])
    for logits in (model.logits(h), mixed, thought_aided_logits(model, PREFIX, THOUGHT).logits):
        ids = torch.arange(logits.shape[-1], device=logits.device)
        is_masked = (ids[..., None] == model.masked_token_ids).any(-1).expand_as(logits)
        assert torch.isneginf(logits[is_masked]).all()
        assert torch.isfinite(logits[~is_masked]).all()
