"""Per-kernel times of one linear layer of the default model's shapes, unquantised and quantised:
`python -m benchmarks.quant_kernels`. Explains the whole-model figures of `bench engine
--compare-quantize`: which kernel wins at 1 row (decode of one stream) and at 8 rows (8 streams).

Minimum over repeats (the least disturbed run on a shared machine), microseconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from quietstar.packed import PackedLinear
from quietstar.quant import Int4Linear, Int8Linear

SHAPES = {  # name: (out_features, in_features) of SmolLM2-135M's fused layers
    "qkv": (960, 576),
    "o": (576, 576),
    "gate_up": (3072, 576),
    "down": (576, 1536),
    "lm_head": (49152, 576),
}


def best_us(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e6


def layers(weight: torch.Tensor) -> dict[str, torch.nn.Module]:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    bf16 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16)
    bf16.weight = torch.nn.Parameter(weight.bfloat16(), requires_grad=False)
    try:
        packed = PackedLinear(bf16)
    except RuntimeError:  # no oneDNN bf16 packing on AVX2: the plain layer, as the engine does
        packed = bf16
    return {
        "fp32": linear,
        "bf16 (packed)": packed,
        "int8": Int8Linear(weight, None, torch.bfloat16),
        "int4 g32": Int4Linear(weight, None, torch.bfloat16, 32),
        "int4 g64": Int4Linear(weight, None, torch.bfloat16, 64),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_kernels", description=__doc__)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--rows", default="1,8", help="comma-separated row counts (M)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per kernel")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} thread(s)")
    print("| layer | rows | " + " | ".join(layers(torch.zeros(16, 64))) + " |")
    print("|---|---|" + "---|" * 5)
    torch.manual_seed(0)
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            mods = layers(torch.randn(n, k) * 0.02)
            for m in (int(r) for r in args.rows.split(",")):
                x = torch.randn(m, k)
                xb = x.bfloat16()
                times = [
                    best_us(lambda: mod(x if key == "fp32" else xb), args.repeats)  # noqa: B023
                    for key, mod in mods.items()
                ]
                print(f"| {name} | {m} | " + " | ".join(f"{t:.0f}" for t in times) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
