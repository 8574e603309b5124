"""`--dtype auto` and the pre-packing decision, on faked CPUs (every class, on any machine) and
on this machine's real probe."""

from __future__ import annotations

import pytest
import torch

from quietstar import dtypes
from quietstar.dtypes import CpuCaps, can_prepack, probe_cpu, resolve_dtype

NATIVE = CpuCaps("AVX512", mkldnn=True, onednn_bf16=True, amx=False)
AMX = CpuCaps("AVX512", mkldnn=True, onednn_bf16=True, amx=True)
EMULATED = CpuCaps("AVX2", mkldnn=True, onednn_bf16=False, amx=False)
NO_ONEDNN = CpuCaps("DEFAULT", mkldnn=False, onednn_bf16=False, amx=False)


@pytest.mark.parametrize("caps", [NATIVE, AMX], ids=["avx512_bf16", "amx"])
def test_auto_is_bf16_where_onednn_runs_it_natively(caps):
    choice = resolve_dtype("auto", "cpu", caps)
    assert choice.dtype == torch.bfloat16 and choice.requested == "auto"
    assert "native bf16" in choice.reason


@pytest.mark.parametrize("caps", [EMULATED, NO_ONEDNN], ids=["avx2", "no-onednn"])
def test_auto_is_fp32_where_bf16_is_emulated(caps):
    choice = resolve_dtype("auto", "cpu", caps)
    assert choice.dtype == torch.float32 and choice.name == "float32"
    assert "emulated" in choice.reason


@pytest.mark.parametrize("caps", [NATIVE, EMULATED], ids=["native", "emulated"])
@pytest.mark.parametrize("asked", ["bfloat16", "float32", torch.bfloat16, torch.float32])
def test_an_explicit_dtype_always_wins(caps, asked):
    choice = resolve_dtype(asked, "cpu", caps)
    want = asked if isinstance(asked, torch.dtype) else getattr(torch, asked)
    assert choice.dtype == want and choice.reason == "asked for explicitly"


@pytest.mark.parametrize("caps", [NATIVE, EMULATED], ids=["native", "emulated"])
def test_int4_weights_take_bf16_activations_on_every_cpu(caps):
    choice = resolve_dtype("auto", "cpu", caps, quantize="int4")
    assert choice.dtype == torch.bfloat16 and "quantised" in choice.reason
    assert resolve_dtype("float32", "cpu", caps, quantize="int4").dtype == torch.float32


@pytest.mark.parametrize("kernel", [True, False], ids=["own-kernel", "pytorch-kernel"])
def test_int8_weights_take_fp32_activations_where_bf16_is_emulated_and_the_kernel_serves(kernel):
    choice = resolve_dtype("auto", "cpu", EMULATED, quantize="int8", int8_kernel=kernel)
    assert choice.dtype == (torch.float32 if kernel else torch.bfloat16), choice.reason
    native = resolve_dtype("auto", "cpu", NATIVE, quantize="int8", int8_kernel=kernel)
    assert native.dtype == torch.bfloat16  # native bf16: the kernel's bf16 dot products
    asked = resolve_dtype("bfloat16", "cpu", EMULATED, quantize="int8", int8_kernel=kernel)
    assert asked.dtype == torch.bfloat16


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="dtype must be one of .*auto.*bfloat16"):
        resolve_dtype("fp8", "cpu", NATIVE)


def test_other_devices_never_probe_the_cpu():
    assert resolve_dtype("auto", "meta", EMULATED).dtype == torch.float32


def test_prepacking_follows_the_kernels():
    assert can_prepack(torch.float32, EMULATED)[0]
    assert can_prepack(torch.bfloat16, NATIVE)[0]
    ok, why = can_prepack(torch.bfloat16, EMULATED)
    assert not ok and "refuses to pre-pack bf16" in why
    assert not can_prepack(torch.float32, NO_ONEDNN)[0]
    assert not can_prepack(torch.float16, NATIVE)[0]


def test_the_probe_agrees_with_onednn_itself():
    """The probe is only as good as what it asks: oneDNN accepting a bf16 weight reorder is the
    ground truth for the bf16 pre-packed path on this very machine."""
    caps = probe_cpu()
    if not caps.mkldnn:
        pytest.skip("this torch build has no oneDNN")
    weight = torch.randn(32, 16, dtype=torch.bfloat16)
    try:
        torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        accepted = True
    except RuntimeError:
        accepted = False
    assert caps.onednn_bf16 == accepted


def test_cpu_flags_are_reported():
    flags = dtypes.cpu_flags()
    assert flags == "unknown" or flags.startswith("none of") or "avx" in flags or "amx" in flags


def test_the_server_config_offers_the_same_dtypes_and_quantisations():
    from quietstar import quant
    from server.engine import config

    assert config.DTYPE_CHOICES == dtypes.DTYPE_CHOICES
    assert config.QUANT_MODES == quant.QUANT_MODES
    assert config.INT4_GROUP_SIZES == quant.INT4_GROUP_SIZES
