"""`python -m benchmarks.step_split`: where one engine decode step's time goes at one stream,
thoughts off: the decoder layers (quietstar's fused `decode_layers` call), the LM head, and the
rest (the engine's Python, embedding, rotary tables, final norm, sampling, bookkeeping).

Milliseconds per step, timed around the layers' call and the head's forward, over `--tokens`
greedy tokens, best of `--repeats` runs. The split says which part a change can still gain on:
the weights (layers' linears and head) shrink with quantisation, the rest does not.

    python -m benchmarks.step_split --quantize q4_1 --dtype float32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PROMPT = "Question: Natalia sold clips to 48 of her friends in April. How many did she sell?\n"


class Timer:
    """Wraps a callable attribute of `owner` and sums the seconds spent in it."""

    def __init__(self, owner, name: str):
        self.seconds, self.owner, self.name = 0.0, owner, name
        self.own = name in vars(owner)  # else found on its class: restored by deleting ours
        self.original = original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)

    def restore(self) -> None:
        if self.own:
            setattr(self.owner, self.name, self.original)
        else:
            delattr(self.owner, self.name)


def measure(args) -> dict:
    import quietstar
    from quietstar.kernels.modules import KernelDecoderLayers
    from server.engine import Engine, EngineConfig, SamplingParams

    torch.set_num_threads(args.threads)
    model = quietstar.load(args.model, args.dtype, quantize=args.quantize)
    engine = Engine(
        EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=1, max_model_len=2048),
        model=model,
    )
    if engine.runner.kernel_layers is None:
        raise SystemExit("the fused CPU decode layers do not serve this model here")
    prompt = model.tokenizer.encode(PROMPT)
    params = SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    head = model.backbone.lm_head
    layers, head_timer = Timer(KernelDecoderLayers, "__call__"), Timer(head, "forward")
    names = iter(range(10**6))

    def run() -> dict:
        engine.add_request(f"r{next(names)}", prompt, params)
        engine.step()  # the prefill and first token, left out
        layers.seconds = head_timer.seconds = 0.0
        start, steps = time.perf_counter(), 0
        while engine.has_unfinished():
            engine.step()
            steps += 1
        total = (time.perf_counter() - start) / steps * 1e3
        in_layers, in_head = layers.seconds / steps * 1e3, head_timer.seconds / steps * 1e3
        return {
            "step ms": total,
            "decoder layers ms": in_layers,
            "LM head ms": in_head,
            "rest ms": total - in_layers - in_head,
        }

    try:
        run()  # warm-up
        runs = [run() for _ in range(args.repeats)]
    finally:
        layers.restore()
        head_timer.restore()
    return min(runs, key=lambda r: r["step ms"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_split", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--quantize",
        default=None,
        choices=["int8", "int4", "q4_1"],
        help="quantisation of the model (default: none)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--tokens", type=int, default=128, help="greedy visible tokens per run")
    p.add_argument("--repeats", type=int, default=3, help="runs (the fastest is reported)")
    p.add_argument("--out", default=None, help="JSON output path (optional)")
    a = p.parse_args(argv)
    row = measure(a)
    print(" | ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"args": vars(a), "split": row}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
