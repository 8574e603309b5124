"""Decode linears, kernel by kernel: `python -m benchmarks.quant_kernels`.

Times every linear of the default model's shapes (SmolLM2-135M: 30 layers of fused q/k/v, o,
fused gate/up and down, plus the LM head) at a few rows, for each way the engine can run them:
PyTorch's (oneDNN pre-packed or plain bf16, `aten._weight_int8pack_mm`, the int4 kernel) and
quietstar's own CPU kernels (`quietstar.kernels`: bf16, fp32, int8 and q4_1 weights). By default
each call reads a different layer's weights, as a decode step does, so weights come from DRAM,
not from cache; `--hot` times
one layer of each shape again and again instead (weights cached: the kernels' compute, not the
memory traffic). Minimum over repeats (the least disturbed run on a shared machine), in ms per
whole model (default) or µs per layer (--hot).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from quietstar.dtypes import cpu_flags
from quietstar.kernels import capability, cpu_ops
from quietstar.kernels.modules import tiled_or_plain, widened_int8
from quietstar.packed import PackedLinear
from quietstar.quant import Int4Linear, Int8Linear, Q4_1Linear, quantize_int8

SHAPES = {  # name: (out_features, in_features) of SmolLM2-135M's fused layers
    "qkv": (960, 576),
    "o": (576, 576),
    "gate_up": (3072, 576),
    "down": (576, 1536),
}
LM_HEAD = (49154, 576)  # the vocabulary and the two thought tokens
LAYERS = 30


def best(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def variants(weight: torch.Tensor) -> dict[str, tuple[str, object]]:
    """name -> (activation dtype, callable x -> y) for one weight."""
    bf16 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16)
    bf16.weight = torch.nn.Parameter(weight.bfloat16(), requires_grad=False)
    fp32 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    fp32.weight = torch.nn.Parameter(weight, requires_grad=False)
    q, scales = quantize_int8(weight)
    scales_bf16 = scales.bfloat16()
    out = {"fp32 (oneDNN packed)": ("fp32", PackedLinear(fp32))}
    w32 = fp32.weight
    out["fp32 (F.linear)"] = ("fp32", lambda x: F.linear(x, w32))
    try:
        out["bf16 (oneDNN packed)"] = ("bf16", PackedLinear(bf16))
    except RuntimeError:  # no oneDNN bf16 packing on this CPU class
        pass
    w = bf16.weight
    out["bf16 (F.linear)"] = ("bf16", lambda x: F.linear(x, w))
    out["int8 (aten)"] = ("bf16", lambda x: torch.ops.aten._weight_int8pack_mm(x, q, scales_bf16))
    out["int4 g32 (aten)"] = ("bf16", Int4Linear(weight, None, torch.bfloat16, 32))
    if cpu_ops() is not None:  # tiled as the engine stores them, and row-major
        ops = torch.ops.quietstar_cpu
        t32, tb = tiled_or_plain(w32), tiled_or_plain(w)
        out["fp32 (quietstar)"] = ("fp32", lambda x: ops.linear_fp32(x, t32, None))
        out["bf16 (quietstar)"] = ("bf16", lambda x: ops.linear_bf16(x, tb, None))
        out["bf16 (quietstar, row-major)"] = ("bf16", lambda x: ops.linear_bf16(x, w, None))
        out["int8 (quietstar)"] = ("bf16", Int8Linear(weight, None, torch.bfloat16))
        int8_fp32 = Int8Linear(weight, None, torch.float32)
        out["int8 (quietstar), fp32 act."] = ("fp32", int8_fp32)
        n, s32 = weight.shape[0], int8_fp32.scales_fp32
        out["int8 widened + GEMM, fp32 act."] = (
            "fp32",
            lambda x: F.linear(x, widened_int8(int8_fp32.weight, n, torch.float32)) * s32,
        )
        scales32 = scales.float()
        out["int8 (quietstar, row-major)"] = (
            "bf16",
            lambda x: ops.linear_int8(x, q, scales32, None),
        )
        out["q4_1 (quietstar), fp32 act."] = ("fp32", Q4_1Linear(weight, None, torch.float32))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_kernels", description=__doc__)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--rows", default="1,8,16", help="comma-separated row counts (M)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per kernel and row count")
    p.add_argument("--hot", action="store_true", help="one layer per shape, weights in cache")
    p.add_argument("--out", default="runs/bench/decode_linears.json", help="JSON output")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = dict(SHAPES, lm_head=LM_HEAD)
    copies = 1 if args.hot else LAYERS
    layers = {  # shape -> one variants() dict per layer copy (the LM head: one)
        name: [
            variants(torch.randn(n, k) * 0.02) for _ in range(1 if name == "lm_head" else copies)
        ]
        for name, (n, k) in shapes.items()
    }
    names = list(layers["qkv"][0])
    rows_list = [int(r) for r in args.rows.split(",")]
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for m in rows_list:
            xs = {k: torch.randn(m, k) for k in {k for _, k in shapes.values()}}
            for name in names:
                if args.hot:
                    for shape, copies_ in layers.items():
                        dtype, fn = copies_[0][name]
                        x = xs[shapes[shape][1]]
                        x = x if dtype == "fp32" else x.bfloat16()
                        t = best(lambda fn=fn, x=x: fn(x), args.repeats * 10)
                        results.setdefault(f"{shape} M={m}", {})[name] = t * 1e6
                    continue
                calls = []
                for shape, copies_ in layers.items():
                    for layer in copies_:
                        dtype, fn = layer[name]
                        x = xs[shapes[shape][1]]
                        calls.append((fn, x if dtype == "fp32" else x.bfloat16()))

                def model(calls=calls):
                    for fn, x in calls:
                        fn(x)

                results.setdefault(f"model M={m}", {})[name] = best(model, args.repeats) * 1e3
    unit = "µs per layer" if args.hot else "ms per model (30 layers + LM head)"
    header = (
        f"CPU capability {torch.backends.cpu.get_cpu_capability()} (kernels: {capability()}), "
        f"flags: {cpu_flags()}, {args.threads} thread(s), {unit}"
    )
    lines = [header, "", "| case | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for case, row in results.items():
        lines.append(
            f"| {case} | " + " | ".join(f"{row.get(n, float('nan')):.2f}" for n in names) + " |"
        )
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "unit": unit, "results": results}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
