"""quietstar's CPU decode kernels (quietstar/kernels) against float64 references: every row count
through the tile remainders, output counts that are not a multiple of the channel block, bias,
bf16 and fp32 activations; a row's result must not depend on the other rows (bitwise), and bad
input must raise an error naming the problem. Whichever build this CPU gets is the one tested
(AVX-512, AVX2 under ATEN_CPU_CAPABILITY=avx2, or the scalar one)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import quietstar
from quietstar import kernels
from quietstar.dtypes import can_prepack
from quietstar.kernels.modules import (
    WIDEN_SCRATCH_MAX,
    RowsLinear,
    kernel_max_rows,
    tile_rows,
    untile_rows,
    widened_int8,
)
from quietstar.packed import PackedLinear
from quietstar.quant import Int8Linear, dequantize_int8, quantize_int8
from tests.engine.engine_support import make_hf_checkpoint


@pytest.fixture(scope="module")
def ops():
    built = kernels.cpu_ops()
    if built is None:
        pytest.skip("quietstar CPU kernels not built here (no compiler, or switched off)")
    return built


def _reference(x, w, bias=None):
    out = x.double() @ w.double().T
    return out if bias is None else out + bias.double()


def _fp32_bound(x, w):
    """A bound on fp32 accumulation error of x @ w^T per output: K * eps * sum |x| |w|."""
    return x.shape[-1] * 2**-23 * (x.double().abs() @ w.double().abs().T) + 1e-6


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K", [96, 48])  # 48: not a multiple of 32 (no bf16 dot-product path)
def test_bf16_weights_match_float64(ops, rows, act, K):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(50, K, generator=g).bfloat16()  # 50 outputs: a partial channel block
    bias = torch.randn(50, generator=g)
    x = torch.randn(rows, K, generator=g).to(act)
    got = ops.linear_bf16(x, w, bias)
    assert got.dtype == act and got.shape == (rows, 50)
    want = _reference(x, w, bias)
    bound = _fp32_bound(x, w) + (want.abs() * 2**-8 if act == torch.bfloat16 else 0)
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("K", [96, 48])
def test_fp32_weights_match_float64(ops, rows, K):
    g = torch.Generator().manual_seed(20 + rows)
    w, bias = torch.randn(50, K, generator=g), torch.randn(50, generator=g)
    x = torch.randn(rows, K, generator=g)
    got = ops.linear_fp32(x, w, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, 50)
    assert ((got.double() - _reference(x, w, bias)).abs() <= _fp32_bound(x, w)).all()


@pytest.mark.parametrize("rows", [1, 4, 6, 11])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16], ids=str)
def test_int8_weights_match_dequantised_float64(ops, rows, act):
    g = torch.Generator().manual_seed(10 + rows)
    w = torch.randn(36, 64, generator=g)
    q, scales = quantize_int8(w)
    x = torch.randn(2, rows, 64, generator=g).to(act)  # leading dimensions are kept
    got = ops.linear_int8(x, q, scales, None)
    assert got.shape == (2, rows, 36) and got.dtype == act
    want = _reference(x, q.float()) * scales.double()
    bound = _fp32_bound(x.reshape(-1, 64), q.float()).view(2, rows, 36) * scales.double() * 2
    if act == torch.bfloat16:
        bound = bound + want.abs() * 2**-8  # the output's rounding to bf16
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("M", [7, 9, 16])  # tiles of 4 (or 8) rows and every remainder
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16], ids=str)
def test_a_row_does_not_depend_on_the_other_rows(ops, M, act):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 128, generator=g)
    x = torch.randn(M, 128, generator=g).to(act)
    q, scales = quantize_int8(w)
    layers = {
        "bf16": lambda t: ops.linear_bf16(t, w.bfloat16(), None),
        "fp32": lambda t: ops.linear_fp32(t, w, None),
        "int8": lambda t: ops.linear_int8(t, q, scales, None),
    }
    for name, layer in layers.items():
        together = layer(x)
        for i in range(M):
            assert torch.equal(layer(x[i : i + 1])[0], together[i]), (name, i)


def test_tile_rows_round_trips_pads_the_last_block_and_refuses_k_that_does_not_divide():
    w = torch.arange(12 * 96, dtype=torch.float32).view(12, 96)
    tiled = tile_rows(w)
    assert tiled.shape == (3, 3, 128)
    # block 0, chunk 1 holds columns 32..63 of rows 0..3, one row after the other
    assert torch.equal(tiled[0, 1].view(4, 32), w[0:4, 32:64])
    assert torch.equal(untile_rows(tiled, 12), w)
    padded = tile_rows(w[:10])  # N not a multiple of 4: two zero rows close the last block
    assert padded.shape == (3, 3, 128)
    assert torch.equal(padded[2, 0].view(4, 32)[2:], torch.zeros(2, 32))
    assert torch.equal(untile_rows(padded, 10), w[:10])
    assert tile_rows(torch.zeros(12, 48)) is None  # K not a multiple of 32


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9, 17])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K", [96, 576])  # 96: an odd number of 32-column chunks
@pytest.mark.parametrize("N", [44, 42, 41])  # 11 blocks, then the last padded by 2 and by 3
def test_tiled_weights_give_the_row_major_results_bitwise(ops, rows, act, K, N):
    g = torch.Generator().manual_seed(rows + K + N)
    w, bias = torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    x = torch.randn(rows, K, generator=g).to(act)
    q, scales = quantize_int8(w)
    half = w.bfloat16()
    tiled_half = ops.linear_bf16(x, tile_rows(half), bias, N)
    assert tiled_half.shape == (rows, N) and torch.equal(tiled_half, ops.linear_bf16(x, half, bias))
    assert torch.equal(ops.linear_bf16(x, tile_rows(half), None, N), ops.linear_bf16(x, half, None))
    assert torch.equal(ops.linear_fp32(x, tile_rows(w), bias, N), ops.linear_fp32(x, w, bias))
    assert torch.equal(
        ops.linear_int8(x, tile_rows(q), scales, bias), ops.linear_int8(x, q, scales, bias)
    )


@pytest.mark.parametrize("N", [4096, 1026])  # 1026: a padded last block, an uneven split
def test_results_do_not_depend_on_the_thread_count(ops, N):
    """Threads share a linear's blocks and steal from each other's shares at the end
    (cpu_parallel.h): 3 and 4 threads on 2 cores make shares finish unevenly, so blocks change
    hands. Every output must still be written once, as one thread computes it."""
    g = torch.Generator().manual_seed(N)
    w, bias = torch.randn(N, 576, generator=g), torch.randn(N, generator=g)
    x = torch.randn(3, 576, generator=g)
    q, scales = quantize_int8(w)
    weights = {
        "int8": lambda: ops.linear_int8(x, tile_rows(q), scales, bias),
        "bf16": lambda: ops.linear_bf16(x, tile_rows(w.bfloat16()), bias, N),
        "fp32": lambda: ops.linear_fp32(x, w, bias),
    }
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = {name: run() for name, run in weights.items()}
        assert torch.allclose(alone["fp32"].double(), _reference(x, w, bias), atol=1e-3)
        for threads in (2, 3, 4):
            torch.set_num_threads(threads)
            for _ in range(5):
                for name, run in weights.items():
                    assert torch.equal(run(), alone[name]), (name, threads)
    finally:
        torch.set_num_threads(before)


def test_output_counts_that_do_not_fit_the_weight_are_named(ops):
    w = torch.randn(10, 64)
    tiled, x = tile_rows(w), torch.randn(1, 64)
    assert ops.linear_fp32(x, tiled, None).shape == (1, 12)  # every stored row, padding included
    for n in (8, 13):  # a whole block short; more rows than stored
        with pytest.raises(RuntimeError, match=f"linear_fp32: {n} output channels do not fit"):
            ops.linear_fp32(x, tiled, None, n)
    with pytest.raises(RuntimeError, match="9 output channels do not fit a weight of shape"):
        ops.linear_bf16(x, w.bfloat16(), None, 9)  # row-major: exactly its rows
    q, scales = quantize_int8(w)
    with pytest.raises(RuntimeError, match="linear_int8: 8 scales .one per output channel."):
        ops.linear_int8(x, tile_rows(q), scales[:8], None)


def test_rows_linear_tiles_only_a_weight_of_its_own(ops):
    g = torch.Generator().manual_seed(6)
    lin = torch.nn.Linear(64, 20, dtype=torch.bfloat16)
    own = RowsLinear(lin, shared=False)
    takes_every_row = kernel_max_rows(torch.bfloat16) > 1 << 40
    # tiled only where the kernel takes every row (else F.linear needs the plain weight)
    assert (own.weight.dim() == 3) == takes_every_row
    assert own.weight.data_ptr() != lin.weight.data_ptr() or not takes_every_row
    assert RowsLinear(lin).weight.data_ptr() == lin.weight.data_ptr()  # shared: as it is
    for n in (1, 5, 40):
        x = torch.randn(n, 64, generator=g).bfloat16()
        assert torch.equal(own(x), RowsLinear(lin)(x))
    # an fp32 weight's bf16 copy beside its oneDNN layer is the kernel's alone: tiled
    wide = torch.nn.Linear(64, 20)
    wide.weight.data = wide.weight.data.bfloat16().float()
    copy = RowsLinear(wide, large=torch.nn.Identity(), bf16_weight=wide.weight.detach().bfloat16())
    assert copy.weight.shape == (5, 2, 128) and copy.weight.dtype == torch.bfloat16
    # an fp32 weight shared with another layer stays itself beside its oneDNN layer; its own, tiled
    tied = RowsLinear(wide, large=torch.nn.Identity())
    assert tied.weight.data_ptr() == wide.weight.data_ptr()
    assert RowsLinear(wide, large=torch.nn.Identity(), shared=False).weight.dim() == 3
    x = torch.randn(3, 64, generator=g)
    assert torch.equal(copy(x), ops.linear_fp32(x, wide.weight.detach(), wide.bias.detach()))
    # 22 outputs: the tiled copy's last block is padded, and the layer's N is still 22
    odd = torch.nn.Linear(64, 22)
    odd.weight.data = odd.weight.data.bfloat16().float()
    half = odd.weight.detach().bfloat16()
    padded = RowsLinear(odd, large=torch.nn.Identity(), bf16_weight=half)
    assert padded.weight.shape == (6, 2, 128) and padded.padded and not copy.padded
    got = padded(x)
    assert got.shape == (3, 22)
    assert torch.equal(got, ops.linear_fp32(x, odd.weight.detach(), odd.bias.detach()))


def test_bad_input_is_named(ops):
    w = torch.randn(8, 32).bfloat16()
    with pytest.raises(RuntimeError, match="needs a contiguous CPU BFloat16 weight"):
        ops.linear_bf16(torch.randn(1, 32), w.float(), None)
    with pytest.raises(RuntimeError, match="activation has 31 features"):
        ops.linear_bf16(torch.randn(1, 31), w, None)
    with pytest.raises(RuntimeError, match="not a multiple of 16"):
        ops.linear_bf16(torch.randn(1, 24), torch.randn(8, 24).bfloat16(), None)
    with pytest.raises(RuntimeError, match="7 scales .one per output channel. do not fit"):
        ops.linear_int8(
            torch.randn(1, 32), torch.zeros(8, 32, dtype=torch.int8), torch.ones(7), None
        )
    with pytest.raises(RuntimeError, match="one contiguous fp32 scale per output"):
        ops.linear_int8(
            torch.randn(1, 32), torch.zeros(8, 32, dtype=torch.int8), torch.ones(8).double(), None
        )
    with pytest.raises(RuntimeError, match="needs a contiguous CPU Float weight"):
        ops.linear_fp32(torch.randn(1, 32), w, None)
    with pytest.raises(
        RuntimeError,
        match=r"tiled \(ceil\(N / 4\), K / 32, 128\), got BFloat16 of shape \[2, 1, 64\]",
    ):
        ops.linear_bf16(torch.randn(1, 32), torch.zeros(2, 1, 64, dtype=torch.bfloat16), None)
    with pytest.raises(RuntimeError, match="bias has 3 values for 8 outputs"):
        ops.linear_bf16(torch.randn(1, 32), w, torch.zeros(3))


def test_rows_linear_switches_to_f_linear_above_its_row_limit(ops):
    g = torch.Generator().manual_seed(5)
    lin = torch.nn.Linear(64, 20, dtype=torch.bfloat16)
    layer = RowsLinear(lin)
    assert layer.weight.data_ptr() == lin.weight.data_ptr()  # no copy of the weight
    layer.max_rows = 5  # what kernel_max_rows() picks depends on the CPU
    few = torch.randn(5, 64, generator=g).bfloat16()
    many = torch.randn(6, 64, generator=g).bfloat16()
    assert torch.equal(layer(few), ops.linear_bf16(few, lin.weight, lin.bias))
    assert torch.equal(layer(many), F.linear(many, lin.weight, lin.bias))


def test_compiled_graph_calls_the_kernels(ops):
    lin = torch.nn.Linear(64, 24, dtype=torch.bfloat16)
    layer = RowsLinear(lin)
    int8 = Int8Linear(lin.weight.detach().float(), None, torch.bfloat16)
    # through the kernels whatever this build would pick (the portable one picks PyTorch's)
    layer.max_rows, int8.use_kernel, int8.max_rows = 8, True, {torch.bfloat16: 8}
    x = torch.randn(1, 64).bfloat16()
    compiled = torch.compile(lambda t: int8(layer(t).repeat(1, 3)[:, :64]), fullgraph=True)
    assert torch.equal(compiled(x), int8(layer(x).repeat(1, 3)[:, :64]))
    # tiled weights with a padded last block: N from out_features, and from int8's scales
    odd = torch.nn.Linear(64, 22)
    odd.weight.data = odd.weight.data.bfloat16().float()
    copy = RowsLinear(odd, large=torch.nn.Identity(), bf16_weight=odd.weight.detach().bfloat16())
    int8_odd = Int8Linear(odd.weight.detach(), None, torch.float32)
    copy.max_rows, int8_odd.use_kernel, int8_odd.max_rows = 8, True, {torch.float32: 8}
    int8_odd.weight = tile_rows(int8_odd.weight) if int8_odd.weight.dim() == 2 else int8_odd.weight
    assert copy.padded and int8_odd.weight.shape[0] * 4 == 24
    xf = torch.randn(2, 64)
    compiled = torch.compile(lambda t: (copy(t), int8_odd(t)), fullgraph=True)
    for got, want in zip(compiled(xf), (copy(xf), int8_odd(xf))):
        assert got.shape == (2, 22) and torch.equal(got, want)


def _logits(model, ids):
    from quietstar.llama import DenseCausalAttention

    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.inference_mode():
        return model.logits(model.hidden(ids, positions, DenseCausalAttention()))


def test_bf16_model_decodes_through_the_kernel_and_matches_plain(ops, tmp_path):
    from quietstar.kernels.modules import kernel_max_rows

    if not kernel_max_rows():
        pytest.skip("the portable build leaves bf16 linears to PyTorch")
    path = make_hf_checkpoint(tmp_path / "tiny", "qwen2")  # biases on q/k/v, tied head
    plain = quietstar.load(path, dtype=torch.bfloat16)
    fast = quietstar.load(path, dtype=torch.bfloat16)
    fast.backbone.fuse_for_inference()
    rows = [m for m in fast.modules() if isinstance(m, RowsLinear)]
    assert len(rows) == 4 * fast.backbone.num_layers + 1
    assert not any(isinstance(m, PackedLinear) for m in fast.modules())
    for n, t in ((1, 1), (3, 11), (3, 20)):  # 1, 33, 60 rows: each side of a 32-row limit
        ids = torch.randint(0, 250, (n, t))
        a, b = _logits(fast, ids), _logits(plain, ids)
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert (a[finite] - b[finite]).abs().max() < 0.05  # bf16 rounding of tiny logits


def test_fp32_model_decodes_through_the_kernel_and_prefills_pre_packed(ops, tmp_path):
    from quietstar.kernels.modules import FP32_KERNEL_MAX_ROWS, kernel_max_rows

    if not kernel_max_rows():
        pytest.skip("the portable build leaves the linears to PyTorch")
    if not can_prepack(torch.float32)[0]:
        pytest.skip("no oneDNN pre-packing on this CPU")
    path = make_hf_checkpoint(tmp_path / "tiny", "qwen2")
    plain = quietstar.load(path, dtype=torch.float32)
    fast = quietstar.load(path, dtype=torch.float32)
    fast.backbone.fuse_for_inference()
    rows = [m for m in fast.modules() if isinstance(m, RowsLinear)]
    assert len(rows) == 4 * fast.backbone.num_layers + 1
    assert all(isinstance(m.large, PackedLinear) for m in rows)
    assert all(m.weight.dtype == torch.float32 for m in rows)  # random fp32 values: kept fp32
    assert rows[0].max_rows == FP32_KERNEL_MAX_ROWS
    for n, t in ((1, 1), (3, 20), (3, 30)):  # 1, 60, 90 rows: each side of the 64-row limit
        ids = torch.randint(0, 250, (n, t))
        a, b = _logits(fast, ids), _logits(plain, ids)
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert (a[finite] - b[finite]).abs().max() < 1e-4


def test_fp32_weights_of_bf16_values_decode_from_a_bf16_copy_bitwise(ops, tmp_path, monkeypatch):
    """A model loaded in fp32 from bf16 weights (the default model, most checkpoints) keeps its
    decode kernels' copy in bf16: half the bytes, and the very results of the fp32 copy."""
    from quietstar.kernels import modules
    from quietstar.kernels.modules import kernel_max_rows

    if not kernel_max_rows():
        pytest.skip("the portable build leaves the linears to PyTorch")
    if not can_prepack(torch.float32)[0]:
        pytest.skip("no oneDNN pre-packing on this CPU")
    path = make_hf_checkpoint(tmp_path / "tiny", "qwen2")

    def fused(bf16_copies: bool):
        model = quietstar.load(path, dtype=torch.float32)
        with torch.no_grad():
            for p in model.backbone.parameters():
                p.copy_(p.bfloat16().float())  # a bf16 checkpoint's values
        if not bf16_copies:
            monkeypatch.setattr(modules, "bf16_copy", lambda w: None)
        model.backbone.fuse_for_inference()
        monkeypatch.undo()
        return model

    halves, fulls = fused(True), fused(False)
    rows = [m for m in halves.modules() if isinstance(m, RowsLinear)]
    assert rows and all(m.weight.dtype == torch.bfloat16 for m in rows)
    assert all(
        m.weight.dtype == torch.float32 for m in fulls.modules() if isinstance(m, RowsLinear)
    )
    for n, t in ((1, 1), (1, 5), (3, 3), (3, 20)):  # 1 to 60 rows through the kernel
        ids = torch.randint(0, 250, (n, t))
        assert torch.equal(_logits(halves, ids), _logits(fulls, ids)), (n, t)
    lin = torch.nn.Linear(32, 8)
    with pytest.raises(ValueError, match="bf16_weight replaces an fp32 weight of its shape"):
        RowsLinear(lin, bf16_weight=lin.weight.detach().bfloat16())  # no `large` layer


def test_fp32_weights_too_large_for_two_copies_stay_pre_packed_only(ops, tmp_path, monkeypatch):
    from quietstar import packed

    if not can_prepack(torch.float32)[0]:
        pytest.skip("no oneDNN pre-packing on this CPU")
    monkeypatch.setattr(packed, "physical_memory", lambda: 1 << 20)  # 1 MiB of RAM
    model = quietstar.load(make_hf_checkpoint(tmp_path / "tiny"), dtype=torch.float32)
    model.backbone.fuse_for_inference()
    assert not any(isinstance(m, RowsLinear) for m in model.modules())
    assert any(isinstance(m, PackedLinear) for m in model.modules())


def test_switched_off_keeps_pytorch_kernels_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv("QUIETSTAR_CPU_KERNELS", "off")
    kernels.cpu_ops.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="quietstar.kernels"):
            assert kernels.cpu_ops() is None
        assert any("QUIETSTAR_CPU_KERNELS=off" in r.getMessage() for r in caplog.records)
        assert not Int8Linear(torch.randn(8, 32), None, torch.bfloat16).use_kernel
    finally:
        kernels.cpu_ops.cache_clear()


def test_a_build_failure_is_logged_and_leaves_pytorch_kernels(monkeypatch, caplog, tmp_path):
    from torch.utils import cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: g++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv("QUIETSTAR_HOME", str(tmp_path))
    kernels.cpu_ops.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="quietstar.kernels"):
            assert kernels.cpu_ops() is None
        (message,) = [r.getMessage() for r in caplog.records if r.name == "quietstar.kernels"]
        assert "could not be built" in message and "g++: command not found" in message
    finally:
        kernels.cpu_ops.cache_clear()


def attention_float64(q, k, v, tk, tv, row):
    """One row's decode attention in float64: q (KVH, G, D) over its slot's prefix and, for a
    thought row, its branch, as the `info` row (slot, prefix, column, thought length, ...) says."""
    slot, plen, col, tlen = row[:4]
    keys, values = k[slot, :, :plen], v[slot, :, :plen]
    if col >= 0:
        keys = torch.cat((keys, tk[slot, col, :, :tlen]), dim=1)
        values = torch.cat((values, tv[slot, col, :, :tlen]), dim=1)
    scale = q.shape[-1] ** -0.5
    p = torch.softmax(q.double() @ keys.double().transpose(-1, -2) * scale, dim=-1)
    return p @ values.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("G", [3, 5])  # query rows per key/value head: a compiled-in count, any
def test_decode_attention_writes_then_matches_float64_softmax(ops, dtype, G):
    g = torch.Generator().manual_seed(7)
    S, K, kvh, D, P, T = 4, 3, 2, 32, 40, 6
    k, v = (torch.randn(S, kvh, P, D, generator=g).to(dtype) for _ in range(2))
    tk, tv = (torch.randn(S, K, kvh, T, D, generator=g).to(dtype) for _ in range(2))
    before = [t.clone() for t in (k, v, tk, tv)]
    # read slot, prefix length, thought column, thought length, writes thought, write slot, pos
    info = torch.tensor(
        [
            [0, 17, -1, 0, 0, 0, 16],  # a base row: appends to slot 0's prefix and reads it
            [1, 40, -1, 0, 0, 1, 39],  # the base row of a slot that also thinks this step
            [1, 40, 0, 1, 1, 1, 0],  # its START row: reads the prefix with that new key
            [1, 40, 2, 4, 1, 1, 3],  # another thought of slot 1, one step further
            [2, 5, 1, 2, 1, 3, 1],  # a padding row: reads slot 2, writes the scratch slot 3
        ]
    )
    N = len(info)
    q = torch.randn(N, kvh, G, D, generator=g).to(dtype)
    k_new, v_new = (torch.randn(N, kvh, D, generator=g).to(dtype) for _ in range(2))
    out = ops.decode_attention(q, k_new, v_new, k, v, tk, tv, info, D**-0.5)
    assert out.dtype == dtype and out.shape == q.shape
    want_k, want_v, want_tk, want_tv = before
    for i, (_, _, col, _, thought, wslot, pos) in enumerate(info.tolist()):
        if thought:
            want_tk[wslot, col, :, pos], want_tv[wslot, col, :, pos] = k_new[i], v_new[i]
        else:
            want_k[wslot, :, pos], want_v[wslot, :, pos] = k_new[i], v_new[i]
    for got, want in zip((k, v, tk, tv), (want_k, want_v, want_tk, want_tv), strict=True):
        assert torch.equal(got, want)  # exactly the rows' writes, nothing else
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, row in enumerate(info.tolist()):
        assert (out[i].double() - attention_float64(q[i], k, v, tk, tv, row)).abs().max() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_attention_over_long_prefixes_and_a_nan_key(ops, dtype):
    """Prefixes of hundreds of keys (whole vector blocks of scores and key quartets plus tails)
    match float64; a NaN key poisons its own row's output and no other."""
    g = torch.Generator().manual_seed(8)
    S, kvh, G, D, P = 3, 1, 3, 64, 700
    k, v = (torch.randn(S, kvh, P, D, generator=g).to(dtype) for _ in range(2))
    lengths = [699, 300, 257]
    info = torch.tensor([[i, n, -1, 0, 0, i, n - 1] for i, n in enumerate(lengths)])
    q = torch.randn(3, kvh, G, D, generator=g).to(dtype)
    k_new, v_new = (torch.randn(3, kvh, D, generator=g).to(dtype) for _ in range(2))
    k_new[2, 0, 5] = float("nan")  # row 2 writes a NaN key, then reads it
    out = ops.decode_attention(q, k_new, v_new, k, v, None, None, info, D**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, n in enumerate(lengths[:2]):
        p = torch.softmax(q[i].double() @ k[i, :, :n].double().transpose(-1, -2) * D**-0.5, -1)
        assert (out[i].double() - p @ v[i, :, :n].double()).abs().max() < tol
    assert out[2].isnan().all() and not out[:2].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_attention_cut_into_key_chunks_matches_float64_alone_or_batched(ops, dtype):
    """Rows of more than 256 keys are attended in chunks of 256 (cut across the prefix and the
    thought branch alike) and merged: each matches float64, and equals bit for bit its result
    alone and on one thread (where a row is cut depends on its own keys only)."""
    g = torch.Generator().manual_seed(9)
    S, K, kvh, G, D, P, T = 5, 2, 3, 3, 64, 800, 12
    k, v = (torch.randn(S, kvh, P, D, generator=g).to(dtype) for _ in range(2))
    tk, tv = (torch.randn(S, K, kvh, T, D, generator=g).to(dtype) for _ in range(2))
    # read slot, prefix length, thought column, thought length, writes thought, write slot, pos
    info = torch.tensor(
        [
            [0, 256, -1, 0, 0, 0, 255],  # exactly one chunk: no merge
            [1, 257, -1, 0, 0, 1, 256],  # 256 | 1
            [2, 250, 1, 10, 1, 2, 9],  # the cut falls inside the thought branch: 250 + 6 | 4
            [3, 514, 0, 3, 1, 3, 2],  # 256 | 256 | 2 + 3
            [4, 800, -1, 0, 0, 4, 799],  # four chunks, the last of 32
        ]
    )
    N = len(info)
    q = torch.randn(N, kvh, G, D, generator=g).to(dtype)
    k_new, v_new = (torch.randn(N, kvh, D, generator=g).to(dtype) for _ in range(2))
    out = ops.decode_attention(q, k_new, v_new, k, v, tk, tv, info, D**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for i, row in enumerate(info.tolist()):
        want = attention_float64(q[i], k, v, tk, tv, row)
        assert (out[i].double() - want).abs().max() < tol, i
        alone = ops.decode_attention(
            q[i : i + 1],
            k_new[i : i + 1],
            v_new[i : i + 1],
            k,
            v,
            tk,
            tv,
            info[i : i + 1],
            D**-0.5,
        )
        assert torch.equal(alone[0], out[i]), i
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = ops.decode_attention(q, k_new, v_new, k, v, tk, tv, info, D**-0.5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, out)


def test_decode_attention_refuses_rows_outside_the_cache(ops):
    k, v = torch.randn(2, 1, 8, 16), torch.randn(2, 1, 8, 16)
    q, new = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 16)

    def call(row, tk=None, tv=None):
        return ops.decode_attention(q, new, new, k, v, tk, tv, torch.tensor([row]), 0.25)

    with pytest.raises(RuntimeError, match="row 0 prefix length 9 outside"):
        call([1, 9, -1, 0, 0, 1, 2])
    with pytest.raises(RuntimeError, match="row 0 writes position 8 outside"):
        call([1, 8, -1, 0, 0, 1, 8])
    with pytest.raises(RuntimeError, match="row 0 slot 2 outside"):
        call([0, 8, -1, 0, 0, 2, 0])
    with pytest.raises(RuntimeError, match="thought column 0 or length 1 outside"):
        call([0, 8, 0, 1, 1, 0, 0])  # a thought row without thought caches
    out = call([1, 3, -1, 0, 0, 1, 2])
    want = torch.softmax(q[0, 0] @ k[1, 0, :3].T * 0.25, -1) @ v[1, 0, :3]
    assert torch.allclose(out[0, 0], want, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_rms_norm_matches_the_model_norm(ops, dtype):
    from quietstar.kernels.modules import KernelRMSNorm
    from quietstar.llama import RMSNorm

    g = torch.Generator().manual_seed(11)
    norm = RMSNorm(96, 1e-5).to(dtype)
    norm.weight.data = torch.randn(96, generator=g).to(dtype)
    fast = KernelRMSNorm(norm)
    for rows in (1, 5, 40):  # 40 rows: more than one thread's share
        x = (torch.randn(2, rows, 96, generator=g) * 3).to(dtype)
        want, got = norm(x), fast(x)
        assert got.dtype == dtype and got.shape == x.shape
        if dtype == torch.float32:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
        else:  # fp32 sums in another order may round a value to the neighbouring bf16
            ulps = (got.float() - want.float()).abs() / want.float().abs().clamp(min=1e-3)
            assert (ulps <= 2**-7).all() and (got == want).float().mean() > 0.97
    # a NaN poisons its own row only, as in the model's norm
    x = torch.randn(3, 96, generator=g).to(dtype)
    clean = fast(x)
    x[1, 5] = float("nan")
    got = fast(x)
    assert got[1].isnan().all() and torch.equal(got[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_kernel_matches_apply_rope_on_a_strided_view(ops, dtype):
    from quietstar.kernels.modules import kernel_rope
    from quietstar.llama import apply_rope

    g = torch.Generator().manual_seed(13)
    B, T, H, D = 2, 3, 5, 32
    fused = torch.randn(B, T, H * D + 48, generator=g).to(dtype)  # q/k next to v, as in qkv
    x = fused[..., : H * D].view(B, T, H, D)
    angles = torch.randn(B, T, D // 2, generator=g) * 10
    cos = torch.cat((angles, angles), -1).cos().to(dtype)
    sin = torch.cat((angles, angles), -1).sin().to(dtype)
    got, want = kernel_rope(x, cos, sin), apply_rope(x, cos, sin)
    assert got.is_contiguous() and got.shape == want.shape
    if dtype == torch.bfloat16:
        assert torch.equal(got, want)  # the same roundings, op by op
    else:
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="cos/sin of x's dtype and shape"):
        ops.rope(x, cos[:, :1], sin[:, :1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_silu_mul_kernel_matches_pytorch_silu_times_up(ops, dtype):
    """silu(gate) * up for [gate, up] halves of a strided view (the fused gate/up projection's
    output), over vector blocks and a tail, with very large and small gates; within its exp's
    2 ulp of PyTorch's (bf16: at most one rounding step apart); NaN stays in its own element."""
    from quietstar.kernels.modules import kernel_silu_gate
    from quietstar.llama import silu_gate

    g = torch.Generator().manual_seed(14)
    m = 3 * 16 + 5  # whole vector blocks and a tail
    wide = torch.randn(4, 2 * m + 7, generator=g) * 6
    wide[0, :4] = torch.tensor([100.0, -100.0, 0.0, -0.0])
    x = wide[:, : 2 * m].to(dtype)  # rows of 2m values, 2m + 7 apart
    got, want = kernel_silu_gate(x), silu_gate(x)
    assert got.shape == (4, m) and got.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-30)
    else:
        assert torch.allclose(got.float(), want.float(), rtol=2**-7, atol=1e-30)
    assert torch.equal(ops.silu_mul(x), got)
    x = x.clone()
    x[2, 3] = float("nan")
    nan = ops.silu_mul(x)
    assert nan[2, 3].isnan() and nan.isnan().sum() == 1
    with pytest.raises(RuntimeError, match="silu_mul needs \\[gate, up\\] halves"):
        ops.silu_mul(torch.randn(2, 7))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_widen_int8_writes_the_exact_values_from_either_layout(ops, dtype):
    g = torch.Generator().manual_seed(8)
    q, _ = quantize_int8(torch.randn(22, 96, generator=g))
    for weight in (q, tile_rows(q)):
        out = torch.full((22, 96), float("nan"), dtype=dtype)
        assert ops.widen_int8(weight, out) is out
        assert torch.equal(out, q.to(dtype))
    first = widened_int8(tile_rows(q), 22, dtype)
    assert torch.equal(first, q.to(dtype))
    q2, _ = quantize_int8(torch.randn(8, 96, generator=g))
    assert torch.equal(widened_int8(q2, 8, dtype), q2.to(dtype))  # the same buffer, reused
    big, _ = quantize_int8(torch.randn(WIDEN_SCRATCH_MAX // 96 + 3, 96, generator=g))
    assert torch.equal(widened_int8(tile_rows(big), len(big), dtype), big.to(dtype))  # a new one
    with pytest.raises(RuntimeError, match="widen_int8: 21 rows do not fit a weight of shape"):
        ops.widen_int8(q, torch.empty(21, 96, dtype=dtype))
    with pytest.raises(RuntimeError, match="widen_int8: out has 64 columns, the weight 96"):
        ops.widen_int8(q, torch.empty(22, 64, dtype=dtype))
    with pytest.raises(RuntimeError, match="contiguous .N, K. float32 or bfloat16"):
        ops.widen_int8(q, torch.empty(22, 96, dtype=torch.float64))


@pytest.mark.parametrize("N", [24, 22])  # 22: the tiled weight's last block is padded
def test_int8_layer_beyond_its_row_limit_matches_its_kernel(ops, N):
    g = torch.Generator().manual_seed(17)
    w = torch.randn(N, 64, generator=g)
    layer = Int8Linear(w, torch.randn(N, generator=g), torch.float32)
    if not layer.use_kernel:
        pytest.skip("the portable build leaves int8 layers to PyTorch")
    assert layer.weight.shape == (6, 2, 128)  # tiled, 24 rows stored either way
    q, scales = quantize_int8(w)
    assert torch.equal(layer.dequantized(), dequantize_int8(q, scales))  # (N, K), no padding
    x = torch.randn(layer.max_rows[torch.float32] + 8, 64, generator=g)
    whole = layer(x)  # the widened weight and a GEMM
    assert torch.equal(whole, F.linear(x, q.float()) * scales + layer.bias)
    by_row = torch.cat([layer(x[i : i + 1]) for i in range(len(x))])  # the kernel
    assert whole.shape == by_row.shape == (len(x), N)
    assert torch.allclose(whole, by_row, rtol=1e-5, atol=1e-5)


def test_a_lock_left_by_a_killed_build_is_removed_and_a_fresh_one_kept(tmp_path):
    import os
    import time

    from quietstar.kernels import STALE_LOCK_SECONDS, _drop_stale_lock

    stale, fresh = tmp_path / "stale", tmp_path / "fresh"
    stale.write_text("")
    fresh.write_text("")
    old = time.time() - STALE_LOCK_SECONDS - 10
    os.utime(stale, (old, old))
    _drop_stale_lock(stale)
    _drop_stale_lock(fresh)  # another process may be building right now
    _drop_stale_lock(tmp_path / "absent")
    assert not stale.exists() and fresh.exists()


# ---------------------------------------------------------------- Q4_1 weights, 8-bit activations


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("act", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N,K", [(44, 576), (41, 96), (6, 1536)])
def test_q4_1_linear_matches_the_integer_reference(ops, rows, act, N, K):
    from quietstar.quant import linear_q4_1_reference, pack_q4_1, quantize_q4_1

    g = torch.Generator().manual_seed(rows + N + K)
    w, bias = torch.randn(N, K, generator=g) * 0.05, torch.randn(N, generator=g)
    x = torch.randn(rows, K, generator=g).to(act)
    q, d, m = quantize_q4_1(w)
    packed = pack_q4_1(q, d, m)
    for b in (None, bias):
        out = ops.linear_q4_1(x, packed, b, N)
        assert out.shape == (rows, N) and out.dtype == act
        want = linear_q4_1_reference(x, q, d, m)
        want = want if b is None else want + b.double()
        tol = (1e-5 if act == torch.float32 else 1e-2) * want.abs().max().item()
        assert (out.double() - want).abs().max().item() <= tol
    # each row alone gives the same bits as in the batch
    together = ops.linear_q4_1(x, packed, bias, N)
    for i in range(rows):
        assert torch.equal(ops.linear_q4_1(x[i : i + 1], packed, bias, N)[0], together[i])


def test_q4_1_packing_round_trips_and_keeps_the_kernel_s_layout():
    from quietstar.quant import pack_q4_1, quantize_q4_1, unpack_q4_1

    w = torch.randn(10, 64, generator=torch.Generator().manual_seed(0))
    q, d, m = quantize_q4_1(w)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and d.dtype == torch.float16
    packed = pack_q4_1(q, d, m)
    assert packed.shape == (3, 2, 80)  # 10 channels -> 3 blocks (2 padding), 64 columns -> 2
    # block 0, chunk 1, channel 2: byte i holds column 32 + i low and 48 + i high
    nib = packed[0, 1, 32:48]
    assert torch.equal(nib & 0x0F, q[2, 32:48]) and torch.equal(nib >> 4, q[2, 48:64])
    assert torch.equal(packed[0, 1, 64:72].view(torch.float16), d[0:4, 1])
    padding = torch.cat([packed[2, :, 32:64], packed[2, :, 68:72], packed[2, :, 76:80]], dim=-1)
    assert not padding.any()  # channels 10 and 11: no codes, scales or minimums
    assert all(torch.equal(a, b) for a, b in zip(unpack_q4_1(packed, 10), (q, d, m)))


def test_q4_1_results_do_not_depend_on_the_thread_count(ops):
    from quietstar.quant import pack_q4_1, quantize_q4_1

    g = torch.Generator().manual_seed(5)
    w, x = torch.randn(1026, 576, generator=g), torch.randn(3, 576, generator=g)
    packed = pack_q4_1(*quantize_q4_1(w))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = ops.linear_q4_1(x, packed, None, 1026)
        for threads in (2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(ops.linear_q4_1(x, packed, None, 1026), alone), threads
    finally:
        torch.set_num_threads(before)


def test_q4_1_a_nan_activation_gives_nan_outputs_for_its_row_only(ops):
    from quietstar.quant import pack_q4_1, quantize_q4_1

    packed = pack_q4_1(*quantize_q4_1(torch.randn(8, 64)))
    x = torch.randn(2, 64)
    clean = ops.linear_q4_1(x, packed, None, 8)
    x[0, 5] = float("nan")
    out = ops.linear_q4_1(x, packed, None, 8)
    assert out[0].isnan().all() and torch.equal(out[1], clean[1])


def test_q4_1_bad_input_is_named(ops):
    from quietstar.quant import pack_q4_1, quantize_q4_1

    packed = pack_q4_1(*quantize_q4_1(torch.randn(8, 64)))
    x = torch.randn(1, 64)
    with pytest.raises(RuntimeError, match="linear_q4_1 needs a contiguous CPU uint8 weight"):
        ops.linear_q4_1(x, packed[..., :64], None, 8)
    with pytest.raises(RuntimeError, match="linear_q4_1: 4 output channels do not fit"):
        ops.linear_q4_1(x, packed, None, 4)
    with pytest.raises(RuntimeError, match="activation has 32 features, the weight 64"):
        ops.linear_q4_1(torch.randn(1, 32), packed, None, 8)
