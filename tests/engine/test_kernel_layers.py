"""Every decoder layer of a decode step in one `quietstar_cpu::decode_layers` call computes,
bitwise, what the layer-by-layer kernel path computes: for base, thought and padding rows, bf16,
fp32, int8, int4 and q4_1 weights, q/k/v biases; it is taken only where every layer runs on the
kernels and the step has few enough rows, and it names bad input."""

from __future__ import annotations

import pytest
import torch

import quietstar
from quietstar.kernels import cpu_ops
from quietstar.kernels.modules import KernelDecoderLayers, RowsLinear, kernel_max_rows
from tests.engine.engine_support import make_engine, tiny_dir
from tests.engine.test_padded_step import serve_requests

pytestmark = pytest.mark.skipif(
    cpu_ops() is None or kernel_max_rows() == 0,
    reason="quietstar's linear kernels are not built or not used on this CPU",
)

# (family, dtype, quantize): bf16, int8, int4 and q4_1 (each under fp32 and bf16 activations) and
# fp32 weights; qwen2 has q/k/v biases and a tied LM head
CASES = [
    ("llama", torch.bfloat16, None),
    ("qwen2", torch.bfloat16, None),
    ("qwen2", torch.float32, "int8"),
    ("llama", torch.bfloat16, "int8"),
    ("qwen2", torch.float32, "int4"),
    ("llama", torch.bfloat16, "int4"),
    ("qwen2", torch.float32, "q4_1"),
    ("llama", torch.bfloat16, "q4_1"),
    ("llama", torch.float32, None),
]


def load(family: str, dtype: torch.dtype, quantize: str | None):
    model = quietstar.load(tiny_dir(family), dtype=dtype, quantize=quantize)
    with torch.no_grad():  # the tiny model's norms start at one; make them matter
        for name, p in model.backbone.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return model


def run(model, dtype: torch.dtype, fused: bool, pad: bool, max_rows: int | None = None):
    """The padded-step test's mix of requests (thoughts of several lengths and counts, plain
    ones, joining while others run); every decode step's hidden states and whether each step
    took the fused call."""
    engine = make_engine(model, max_num_seqs=5, dtype=str(dtype).removeprefix("torch."))
    runner = engine.runner
    runner.pad = pad
    layers = runner.kernel_layers
    if not fused:
        runner.kernel_layers = None
    elif max_rows is not None:
        layers.max_rows = max_rows
    hidden, took = [], []
    decode, call = runner.decode, KernelDecoderLayers.__call__

    def recording_decode(seqs):
        out = decode(seqs)
        hidden.append(out.h.clone())
        return out

    def counting_call(self, *args):
        took.append(len(hidden))
        return call(self, *args)

    runner.decode = recording_decode
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KernelDecoderLayers, "__call__", counting_call)
        results = serve_requests(engine)
    return hidden, sorted(set(took)), results, layers


@pytest.mark.parametrize("family,dtype,quantize", CASES, ids=lambda c: str(c))
@pytest.mark.parametrize("pad", [False, True], ids=["packed", "padded"])
def test_fused_layers_equal_the_layer_by_layer_path_bitwise(family, dtype, quantize, pad):
    model = load(family, dtype, quantize)
    want, _, want_results, _ = run(model, dtype, fused=False, pad=pad)
    got, took, results, layers = run(model, dtype, fused=True, pad=pad)
    assert layers is not None
    assert len(took) == len(got) == len(want)  # every step took the fused call
    for step, (a, b) in enumerate(zip(got, want)):
        assert torch.equal(a, b), f"step {step}: hidden states differ"
    for key, choice in want_results.items():
        assert results[key].token_ids == choice.token_ids
        assert results[key].thoughts == choice.thoughts


@pytest.mark.parametrize("pad", [False, True], ids=["packed", "padded"])
def test_fp32_model_of_bf16_values_fuses_its_bf16_copies_bitwise(pad):
    """fp32 activations over the bf16 copies an fp32 model of bf16 values decodes from."""
    model = load("qwen2", torch.float32, None)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.copy_(p.bfloat16().float())
    want, _, want_results, _ = run(model, torch.float32, fused=False, pad=pad)
    got, took, results, layers = run(model, torch.float32, fused=True, pad=pad)
    linears = [w for w in layers.weights if w is not None and w.dim() >= 2]  # (N, K) or tiled
    assert linears and all(w.dtype == torch.bfloat16 for w in linears)
    assert any(w.dim() == 3 for w in linears)  # the copies are the kernel's own: tiled
    assert len(took) == len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == torch.float32 and torch.equal(a, b), f"step {step}"
    for key, choice in want_results.items():
        assert results[key].token_ids == choice.token_ids


def test_steps_with_more_rows_than_the_kernels_take_go_layer_by_layer():
    model = load("llama", torch.bfloat16, None)
    want, _, _, _ = run(model, torch.bfloat16, fused=False, pad=False)
    got, took, _, _ = run(model, torch.bfloat16, fused=True, pad=False, max_rows=6)
    assert 0 < len(took) < len(got)  # some steps fused, the wider ones not
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_models_off_the_kernels_keep_the_layers(monkeypatch):
    """int4 layers whose output rows PyTorch's packing padded (cut off after the matmul), and fp32
    weights too large for a second copy (oneDNN's pre-packed layers only): no fused call."""
    from quietstar import packed

    model = quietstar.load(tiny_dir("llama"), dtype=torch.bfloat16, quantize="int4")
    assert KernelDecoderLayers.of(model.backbone) is not None
    model.backbone.layers[1].mlp.down_proj.padded = True
    assert KernelDecoderLayers.of(model.backbone) is None
    monkeypatch.setattr(packed, "physical_memory", lambda: 1 << 20)
    model = quietstar.load(tiny_dir("llama"), dtype=torch.float32)
    model.backbone.fuse_for_inference()
    assert KernelDecoderLayers.of(model.backbone) is None
    plain = quietstar.load(tiny_dir("llama"), dtype=torch.bfloat16)
    assert KernelDecoderLayers.of(plain.backbone) is None  # not fused for inference


def test_bad_input_is_named():
    model = load("llama", torch.bfloat16, None)
    model.backbone.fuse_for_inference()
    layers = KernelDecoderLayers.of(model.backbone)
    L, d = model.backbone.num_layers, 64
    k = torch.zeros(L, 2, 2, 8, 16, dtype=torch.bfloat16)
    x, cos = torch.zeros(1, d, dtype=torch.bfloat16), torch.ones(1, 1, 16, dtype=torch.bfloat16)
    info = torch.tensor([[0, 1, -1, 0, 0, 0, 0]])
    op = torch.ops.quietstar_cpu.decode_layers
    with pytest.raises(RuntimeError, match="weight entries for 2 layers"):
        op(x, cos, cos, layers.weights[:-1], k, k.clone(), None, None, info, 4, 1e-5, 0.25)
    with pytest.raises(RuntimeError, match="not a multiple of 2 key/value heads"):
        op(x, cos, cos, layers.weights, k, k.clone(), None, None, info, 3, 1e-5, 0.25)
    missing = list(layers.weights)
    missing[1] = None
    with pytest.raises(RuntimeError, match=r"entry 1 \(layer 0, entry 1\) is None"):
        op(x, cos, cos, missing, k, k.clone(), None, None, info, 4, 1e-5, 0.25)
    wrong = list(layers.weights)
    wrong[1] = wrong[1].double()
    with pytest.raises(RuntimeError, match="bf16, fp32, int8, int4 or q4_1 only"):
        op(x, cos, cos, wrong, k, k.clone(), None, None, info, 4, 1e-5, 0.25)
    int4 = quietstar.load(tiny_dir("llama"), dtype=torch.bfloat16, quantize="int4")
    weights = list(KernelDecoderLayers.of(int4.backbone).weights)
    weights[2] = torch.zeros(3, 128, 2, dtype=torch.bfloat16)  # 3 groups do not divide 64
    with pytest.raises(RuntimeError, match=r"int4 scales of shape \[3, 128, 2\] for 64 input"):
        op(x, cos, cos, weights, k, k.clone(), None, None, info, 4, 1e-5, 0.25)
    # one layer's caches but the weights of two
    with pytest.raises(RuntimeError, match="weight entries for 1 layers"):
        op(x, cos, cos, layers.weights, k[:1], k[:1].clone(), None, None, info, 4, 1e-5, 0.25)


def test_a_tied_lm_head_keeps_sharing_its_embedding_while_other_weights_tile():
    """A bf16 model's kernel weights are tiled where they are the kernel's alone; the tied LM
    head stays the embedding's memory (a copy would double the largest matrix)."""
    backbone = load("qwen2", torch.bfloat16, None).backbone
    embedding = backbone.embed_tokens.weight
    assert backbone.lm_head.weight.data_ptr() == embedding.data_ptr()  # tied
    backbone.fuse_for_inference()
    assert isinstance(backbone.lm_head, RowsLinear)
    assert backbone.lm_head.weight.data_ptr() == embedding.data_ptr()
    if kernel_max_rows(torch.bfloat16) > 1 << 40:  # the kernel takes every row: nothing else
        assert backbone.layers[0].mlp.gate_up_proj.weight.dim() == 3  # needs the plain weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rotary_tables_read_per_step_equal_the_models_rotary_bitwise(dtype):
    """The fused step reads its rows' cos/sin from tables made once (every position a prefix and
    a thought can reach); each row equals the model's rotary for that position, bit for bit, in
    steps of any size."""
    engine = make_engine(
        load("llama", dtype, None), max_num_seqs=2, dtype=str(dtype).removeprefix("torch.")
    )
    runner, rotary = engine.runner, engine.runner.model.backbone.rotary
    last = runner.cache.max_len + runner.cache.max_thought_len + 1
    g = torch.Generator().manual_seed(3)
    for n in (1, 3, 8, 40):
        positions = torch.randint(0, last + 1, (n,), generator=g)
        positions[0] = last
        got, want = runner._rope_rows(positions, dtype), rotary(positions[None], dtype)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == dtype and torch.equal(a, b), n
