"""`python -m benchmarks.decode_attention`: quietstar's CPU decode attention alone, milliseconds
per decode step of the default model's shape (30 layers, 3 key/value heads of 3 query rows,
head dim 64), for rows each reading its own slot's prefix of P keys.

    python -m benchmarks.decode_attention --prefix 40,200,1000 --rows 1,16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

LAYERS, KV_HEADS, GROUP, HEAD_DIM = 30, 3, 3, 64


def step_ms(prefix: int, rows: int, dtype: torch.dtype, repeats: int) -> float:
    op = torch.ops.quietstar_cpu.decode_attention
    slots = max(rows, 1)
    k = torch.randn(LAYERS, slots, KV_HEADS, prefix + 1, HEAD_DIM).to(dtype)
    v = torch.randn_like(k)
    # read slot, prefix length, no thought, writes the prefix of its own slot at `prefix`
    info = torch.tensor([[i, prefix + 1, -1, 0, 0, i, prefix] for i in range(rows)])
    q = torch.randn(rows, KV_HEADS, GROUP, HEAD_DIM).to(dtype)
    new = torch.randn(rows, KV_HEADS, HEAD_DIM).to(dtype)

    def step() -> None:
        for layer in range(LAYERS):
            op(q, new, new, k[layer], v[layer], None, None, info, HEAD_DIM**-0.5)

    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_attention", description=__doc__)
    p.add_argument("--prefix", default="40,200,1000", help="comma-separated prefix lengths")
    p.add_argument("--rows", default="1,16", help="comma-separated rows per step")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=20, help="timed steps (the fastest is kept)")
    a = p.parse_args(argv)
    from quietstar.kernels import cpu_ops

    if cpu_ops() is None:
        raise SystemExit("quietstar's CPU kernels are not built here (see the log above)")
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    print(f"| prefix keys | rows | ms per step ({a.dtype}, {a.threads} threads, {LAYERS} layers) |")
    print("|---|---|---|")
    for prefix in map(int, a.prefix.split(",")):
        for rows in map(int, a.rows.split(",")):
            print(
                f"| {prefix} | {rows} | {step_ms(prefix, rows, dtype, a.repeats):.3f} |", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
