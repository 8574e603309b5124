"""The engine's inference-only model transform (fused projections, oneDNN pre-packed linears on
CPU) computes the same logits as the plain model, in each dtype where the CPU packs it; where it
cannot, the model stays plain and says so once."""

from __future__ import annotations

import logging

import pytest
import torch

import quietstar
from quietstar import dtypes
from quietstar.dtypes import CpuCaps, can_prepack
from quietstar.llama import DenseCausalAttention
from quietstar.packed import PackedLinear
from tests.engine.engine_support import make_hf_checkpoint

# bf16 rounding of the tiny model's logits; fp32 packing only reorders the accumulation.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.05}


def _logits(model, ids):
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.inference_mode():
        return model.logits(model.hidden(ids, positions, DenseCausalAttention()))


@pytest.fixture(autouse=True)
def pytorch_kernels_only(monkeypatch):
    """These tests are about oneDNN packing: bf16 models would otherwise take quietstar's own
    decode kernels (tested in tests/quietstar/test_cpu_kernels.py)."""
    from quietstar import kernels

    monkeypatch.setenv("QUIETSTAR_CPU_KERNELS", "off")
    kernels.cpu_ops.cache_clear()
    yield
    kernels.cpu_ops.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_and_packed_matches_plain(tmp_path, dtype):
    ok, why = can_prepack(dtype)
    if not ok:
        pytest.skip(f"no pre-packed {dtype} path on this CPU: {why}")
    path = make_hf_checkpoint(tmp_path / "tiny", "qwen2")  # biases on q/k/v, tied head
    plain = quietstar.load(path, dtype=dtype)
    fast = quietstar.load(path, dtype=dtype)
    fast.backbone.fuse_for_inference()
    packed = [m for m in fast.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * fast.backbone.num_layers + 1  # qkv, o, gate_up, down; LM head
    ids = torch.randint(0, 250, (3, 11))
    a, b = _logits(fast, ids), _logits(plain, ids)
    finite = torch.isfinite(b)
    assert torch.equal(torch.isfinite(a), finite)
    assert (a[finite] - b[finite]).abs().max() < TOLERANCE[dtype]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95


def test_a_cpu_that_cannot_pack_keeps_plain_linears_and_says_so_once(tmp_path, monkeypatch, caplog):
    emulated = CpuCaps("AVX2", mkldnn=True, onednn_bf16=False, amx=False)
    monkeypatch.setattr(dtypes, "probe_cpu", lambda: emulated)
    model = quietstar.load(make_hf_checkpoint(tmp_path / "tiny"), dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="quietstar.packed"):
        model.backbone.fuse_for_inference()
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    messages = [r.getMessage() for r in caplog.records if r.name == "quietstar.packed"]
    assert len(messages) == 1 and "refuses to pre-pack bf16" in messages[0]
    ids = torch.randint(0, 250, (1, 5))
    assert torch.isfinite(_logits(model, ids)).any()
