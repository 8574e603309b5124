"""Weight-only quantisation (quietstar/quant.py): per-layer round-trip error within the format's
rounding bound, logits close to the unquantised model, the engine equal to the no-cache reference
on the same quantised weights (thoughts on), and clear refusals."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar import reference
from quietstar.kernels import cpu_ops
from quietstar.llama import DenseCausalAttention
from quietstar.quant import (
    Int4Linear,
    Int8Linear,
    QuantSpec,
    check_int4_kernel,
    quantize_model,
    quantized_linears,
)
from tests.engine.engine_support import (
    assert_close,
    make_engine,
    prompt_ids,
    run_to_completion,
    tiny_dir,
    torch_threads,
)
from tests.support import randomize_heads

# q4_1 runs on quietstar's kernels only (any build of them, the portable one included)
Q4_1 = pytest.param(
    "q4_1",
    32,
    marks=pytest.mark.skipif(cpu_ops() is None, reason="quietstar's CPU kernels are not built"),
)
VARIANTS = [("int8", 32), ("int4", 32), ("int4", 64), Q4_1]


def fused_reference(family: str = "smollm2") -> dict[str, torch.Tensor]:
    """Name -> fp32 weight of every linear the quantiser replaces (projections fused alike)."""
    model = quietstar.load(tiny_dir(family), dtype=torch.float32)
    for layer in model.backbone.layers:
        layer.self_attn.fuse()
        layer.mlp.fuse()
    return {
        name: m.weight.detach().clone()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith("backbone.")
    }


def rounding_bound(w: torch.Tensor, mode: str, group_size: int) -> torch.Tensor:
    """Half a quantisation step per element: absmax/127 per row (int8), range/15 per group (int4,
    q4_1); q4_1 adds the fp16 rounding of its scale (times up to 15) and minimum."""
    if mode == "int8":
        return (w.abs().amax(dim=1, keepdim=True) / 127 / 2).expand_as(w)
    g = w.reshape(w.shape[0], -1, group_size)
    lo = g.amin(-1, keepdim=True)
    step = (g.amax(-1, keepdim=True) - lo) / 15
    bound = step / 2
    if mode == "q4_1":
        bound = bound + (15 * step + lo.abs()) * 2**-11
    return bound.expand_as(g).reshape(w.shape)


@pytest.mark.parametrize("mode,group_size", VARIANTS)
def test_round_trip_error_per_layer_within_half_a_step(mode, group_size):
    originals = fused_reference()
    with torch_threads(1):
        model = quietstar.load(
            tiny_dir("smollm2"), dtype=torch.float32, quantize=mode, quantize_group_size=group_size
        )
        layers = quantized_linears(model)
        # every backbone linear, the (tied) LM head included, and nothing of the mixing head
        assert set(layers) == set(originals)
        assert "backbone.lm_head" in layers
        assert isinstance(layers["backbone.lm_head"], Int8Linear)  # int8 in both modes
        for name, layer in layers.items():
            w = originals[name]
            err = (layer.dequantized() - w).abs()
            layer_mode = "int8" if name == "backbone.lm_head" else mode
            bound = rounding_bound(w, layer_mode, group_size) * 1.001 + 1e-6
            assert bool((err <= bound).all()), f"{name}: max error {err.max():.3g} over bound"
            assert err.max() > 0, f"{name}: not quantised at all"
    assert model.mixing_head.net[0].weight.dtype == torch.float32
    assert model.start_embedding.dtype == torch.float32


def test_output_rows_are_padded_for_the_int4_kernel():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 37)  # 37 rows: not a multiple of 16
    layer = Int4Linear(linear.weight.detach(), linear.bias.detach(), torch.float32, 32)
    x = torch.randn(3, 64)
    assert layer(x).shape == (3, 37)
    expected = x @ layer.dequantized().T + linear.bias
    assert torch.allclose(layer(x), expected.detach(), atol=1e-4)


@pytest.mark.skipif(cpu_ops() is None, reason="quietstar's CPU kernels are not built")
def test_q4_1_layer_with_padded_channels_and_a_bias():
    from quietstar.quant import Q4_1Linear, linear_q4_1_reference, unpack_q4_1

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 37)  # 37 channels: the last block of 4 holds 3 padding rows
    layer = Q4_1Linear(linear.weight.detach(), linear.bias.detach(), torch.float32)
    x = torch.randn(2, 3, 64)
    out = layer(x)
    assert out.shape == (2, 3, 37)
    expected = linear_q4_1_reference(x.reshape(6, 64), *unpack_q4_1(layer.weight, 37))
    expected = expected + linear.bias.detach().double()
    assert torch.allclose(out.reshape(6, 37).double(), expected, atol=1e-4)
    with pytest.raises(
        ValueError, match="q4_1 needs input features in blocks of 32; a layer has 48"
    ):
        Q4_1Linear(torch.randn(8, 48), None, torch.float32)


# Bounds on the max |logit difference| relative to the largest |logit| of the unquantised model
# on the tiny random models (observed: int8 0.4 %, int4 4-6 %, q4_1 5 %).
LOGIT_BOUNDS = {"int8": 0.02, "int4": 0.15, "q4_1": 0.15}


@pytest.mark.parametrize("mode,group_size", VARIANTS)
@pytest.mark.parametrize("family", ["smollm2", "qwen2"])
def test_quantised_logits_close_to_unquantised(family, mode, group_size):
    ids = torch.tensor([prompt_ids(24, seed=3)])
    positions = torch.arange(ids.shape[1])[None]
    with torch_threads(1), torch.no_grad():
        full = quietstar.load(tiny_dir(family), dtype=torch.float32)
        quant = quietstar.load(
            tiny_dir(family), dtype=torch.float32, quantize=mode, quantize_group_size=group_size
        )
        ref = full.logits(full.hidden(ids, positions, DenseCausalAttention()))
        out = quant.logits(quant.hidden(ids, positions, DenseCausalAttention()))
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(out))
    diff = (out - ref)[finite].abs().max()
    assert diff > 0
    assert diff <= LOGIT_BOUNDS[mode] * ref[finite].abs().max(), f"max logit diff {diff:.3g}"


# The engine and the reference sum attention in different orders, which moves a row's values by
# about 1e-7 relative. The weight-only modes pass that on as it is. q4_1 rounds every activation to
# 8 bits, and a change that small flips a code now and then: nudging the tiny model's first-layer
# input by 1e-7 relative moved its log-probs by up to 6e-3 (int8: 1e-6). So the bound for q4_1 is
# that sensitivity, with a margin; a wrong thought or mixing weight moves them by 0.1 or more.
ENGINE_ATOL = {"int8": 1e-4, "int4": 1e-4, "q4_1": 2e-2}


@pytest.mark.parametrize("mode,group_size", [("int8", 32), ("int4", 32), Q4_1])
def test_thoughts_on_engine_equals_reference_on_the_same_quantised_weights(mode, group_size):
    from server.engine import SamplingParams, ThoughtParams

    model = quietstar.load(
        tiny_dir("smollm2"), dtype=torch.float32, quantize=mode, quantize_group_size=group_size
    )
    randomize_heads(model, seed=1)
    prompt = prompt_ids(11, seed=5)
    params = SamplingParams(
        max_tokens=5,
        temperature=1.0,
        seed=7,
        ignore_eos=True,
        logprobs=0,
        thoughts=ThoughtParams(enabled=True, num_tokens=3, include=True),
    )
    with torch_threads(1):
        engine = make_engine(model)
        engine.add_request("r", prompt, params)
        choice = run_to_completion(engine)["r", 0]
        assert len(choice.tokens) == 5
        prefix = list(prompt)
        for i, tok in enumerate(choice.tokens):
            ref = reference.thought_aided_logits(model, prefix, tok.thought_ids[0])
            expected = torch.log_softmax(ref.logits, dim=-1)[tok.token_id]
            assert_close(tok.logprob, expected, ENGINE_ATOL[mode], f"position {i} logprob")
            assert_close(tok.mixing_weights[0], ref.w.item(), ENGINE_ATOL[mode], f"position {i} w")
            prefix.append(tok.token_id)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "mode,group_size,message",
    [
        ("int3", 32, "quantize must be one of"),
        ("int4", 16, "int4 group size must be one of"),
        ("q4_1", 64, "q4_1 blocks hold 32 values, got group size 64"),
    ],
)
def test_bad_settings_are_refused_before_loading(mode, group_size, message):
    from server.engine import EngineConfig

    with pytest.raises(ValueError, match=message):
        quietstar.load("/nonexistent", quantize=mode, quantize_group_size=group_size)
    with pytest.raises(ValueError, match=message):
        EngineConfig(quantize=mode, quantize_group_size=group_size)


def test_group_size_that_does_not_divide_a_layer_is_refused():
    with pytest.raises(ValueError, match="group size 128 does not divide .* 64 input features"):
        quietstar.load(
            tiny_dir("smollm2"), dtype=torch.float32, quantize="int4", quantize_group_size=128
        )


def test_int4_refused_on_a_device_without_a_kernel():
    with pytest.raises(ValueError, match="no int4 weight-only kernel for device meta"):
        check_int4_kernel(torch.device("meta"), torch.bfloat16)


def test_q4_1_refused_off_the_cpu_and_without_the_kernels(monkeypatch):
    from quietstar import kernels
    from quietstar.quant import check_q4_1_kernel

    with pytest.raises(ValueError, match="no q4_1 kernel for device meta: it runs on the CPU only"):
        check_q4_1_kernel(torch.device("meta"))
    monkeypatch.setenv("QUIETSTAR_CPU_KERNELS", "off")
    kernels.cpu_ops.cache_clear()
    try:
        with pytest.raises(ValueError, match="q4_1 runs on quietstar's CPU kernels, which are not"):
            quietstar.load(tiny_dir("smollm2"), dtype=torch.float32, quantize="q4_1")
    finally:
        monkeypatch.undo()
        kernels.cpu_ops.cache_clear()


def test_quantising_twice_is_refused():
    model = quietstar.load(tiny_dir("smollm2"), dtype=torch.float32, quantize="int8")
    with pytest.raises(ValueError, match="already fused"):
        quantize_model(model, QuantSpec("int8"))


def test_training_refuses_a_quantised_model():
    from training.config import TrainConfig
    from training.objective import QuietStarObjective

    model = quietstar.load(tiny_dir("smollm2"), dtype=torch.float32, quantize="int8")
    with pytest.raises(ValueError, match="cannot train a quantised model \\(int8\\)"):
        QuietStarObjective(model, TrainConfig(n_ahead=4, n_ahead_talk=2, seq_len=8))


def test_serve_flag_reaches_the_engine_config():
    from server.config import from_args

    config = from_args(["--quantize", "int4", "--quantize-group-size", "64"])
    assert (config.engine.quantize, config.engine.quantize_group_size) == ("int4", 64)
    assert from_args([]).engine.quantize is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_logits_close_on_cuda(mode):
    ids = torch.tensor([prompt_ids(24, seed=3)], device="cuda")
    positions = torch.arange(ids.shape[1], device="cuda")[None]
    with torch.no_grad():
        full = quietstar.load(tiny_dir("smollm2"), dtype=torch.bfloat16, device="cuda")
        quant = quietstar.load(
            tiny_dir("smollm2"), dtype=torch.bfloat16, device="cuda", quantize=mode
        )
        ref = full.logits(full.hidden(ids, positions, DenseCausalAttention()))
        out = quant.logits(quant.hidden(ids, positions, DenseCausalAttention()))
    finite = torch.isfinite(ref)
    diff = (out - ref)[finite].abs().max()
    assert diff <= LOGIT_BOUNDS[mode] * ref[finite].abs().max() + 0.05


def test_bench_variant_names():
    from benchmarks.quant_throughput import parse_variant

    assert parse_variant("none") == (None, 32, "bfloat16")
    assert parse_variant("int4:64@float32") == ("int4", 64, "float32")
    assert parse_variant("int8", "float32") == ("int8", 32, "float32")
    for bad in ("int3", "int8@float16"):
        with pytest.raises(ValueError, match="unknown variant"):
            parse_variant(bad)


@pytest.mark.parametrize(
    "mode, kernels, warned",
    [("int8", "on", False), ("int8", "off", True), ("int4", "on", True)],
)
def test_float32_activations_warn_where_a_layer_takes_the_scalar_path(
    monkeypatch, caplog, mode, kernels, warned
):
    import logging

    from quietstar import kernels as qk

    monkeypatch.setenv("QUIETSTAR_CPU_KERNELS", kernels)
    qk.cpu_ops.cache_clear()
    if kernels == "on" and mode == "int8":  # the portable build keeps PyTorch's int8 kernel
        from quietstar.kernels.modules import kernel_max_rows

        warned = qk.cpu_ops() is None or not kernel_max_rows()
    try:
        with caplog.at_level(logging.WARNING, logger="quietstar.quant"):
            quietstar.load(tiny_dir("smollm2"), dtype=torch.float32, quantize=mode)
    finally:
        qk.cpu_ops.cache_clear()
    messages = [r.getMessage() for r in caplog.records if "scalar CPU path" in r.getMessage()]
    assert bool(messages) == warned
