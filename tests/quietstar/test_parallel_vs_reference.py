"""The tokenwise-parallel thought forward (spec §3.4) equals one explicit sequence per position."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar.parallel import parallel_thought_forward
from quietstar.reference import thought_aided_logits
from tests.quietstar.logit_checks import assert_logits_close, finite_max_abs_diff
from tests.support import DEVICE, make_hf_checkpoint, randomize_heads

NUM_THOUGHT_TOKENS = 3


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parallel_s0_equals_per_position_reference(tmp_path, family):
    model = quietstar.load(
        make_hf_checkpoint(tmp_path / family, family), dtype=torch.float32, device=DEVICE
    )
    randomize_heads(model, seed=1)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 259, (2, 10), generator=g).to(DEVICE)
    thoughts = torch.randint(3, 259, (2, 10, NUM_THOUGHT_TOKENS), generator=g).to(DEVICE)
    with torch.no_grad():
        out = parallel_thought_forward(
            model, ids, NUM_THOUGHT_TOKENS, n_talk=1, thought_ids=thoughts
        )
    assert torch.equal(out.thought_ids, thoughts)
    mixed, w = out.mixed_logits[0], out.mixing_weights[0]  # (B, T, V), (B, T, 1)
    assert bool(w.abs().max() > 1e-2)  # the heads really mix
    for b in range(ids.shape[0]):
        for i in range(ids.shape[1]):
            ref = thought_aided_logits(model, ids[b, : i + 1].tolist(), thoughts[b, i].tolist())
            assert_logits_close(mixed[b, i], ref.logits, atol=1e-4)
            assert_logits_close(out.base_logits[b, i], ref.base_logits, atol=1e-4)
            assert torch.allclose(w[b, i], ref.w, atol=1e-5)


def test_compare_helper_is_nan_safe():
    inf = float("-inf")
    a = torch.tensor([0.0, inf, 1.0])
    assert finite_max_abs_diff(a, a.clone()) == 0.0
    with pytest.raises(AssertionError, match="masks differ"):
        finite_max_abs_diff(a, torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(AssertionError, match="NaN"):
        finite_max_abs_diff(torch.tensor([0.0, float("nan"), 1.0]), a)
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_logits_close(torch.tensor([0.0, inf, 1.5]), a, atol=1e-4)
