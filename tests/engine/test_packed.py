"""The engine's inference-only model transform (fused projections, oneDNN pre-packed bf16
linears on CPU) computes the same logits as the plain model."""

from __future__ import annotations

import torch

import quietstar
from quietstar.llama import DenseCausalAttention
from quietstar.packed import PackedLinear
from tests.engine.engine_support import make_hf_checkpoint


def _logits(model, ids):
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.inference_mode():
        return model.logits(model.hidden(ids, positions, DenseCausalAttention()))


def test_fused_and_packed_bf16_matches_plain(tmp_path):
    path = make_hf_checkpoint(tmp_path / "tiny", "qwen2")  # biases on q/k/v, tied head
    plain = quietstar.load(path, dtype=torch.bfloat16)
    fast = quietstar.load(path, dtype=torch.bfloat16)
    fast.backbone.fuse_for_inference()
    if torch.backends.mkldnn.is_available():
        assert any(isinstance(m, PackedLinear) for m in fast.modules())
    ids = torch.randint(0, 250, (3, 11))
    a, b = _logits(fast, ids), _logits(plain, ids)
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite)
    assert (a[finite] - b[finite]).abs().max() < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95
