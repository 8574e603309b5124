"""`quietstar bench dtypes`: bf16 against fp32 on this machine, for each kind of work a server
does (1 and 8 streams, thoughts off and on, prefill, thought-aided scoring), interleaved in one
run so that the ratios survive a noisy machine. It shows what `--dtype auto` picks here and why,
and what oneDNN weight pre-packing buys in each dtype where the CPU has it.

    quietstar bench dtypes --out results/benchmarks/dtypes-avx512.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from quietstar.dtypes import can_prepack, cpu_flags, probe_cpu, resolve_dtype

PROMPT = "Q: A baker made 24 muffins and sold 3 boxes of 4. How many muffins are left?\nA:"
DTYPES = ("bfloat16", "float32")
PLAIN = " (not pre-packed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quietstar bench dtypes", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: process CPU seconds (robust on a shared machine; use with --threads 1); "
        "wall: elapsed seconds",
    )
    p.add_argument("--tokens", type=int, default=32, help="visible tokens per decode run")
    p.add_argument("--thought-tokens", type=int, default=None, help="L (default: trained)")
    p.add_argument("--context", type=int, default=256, help="tokens prefilled and scored")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (median)")
    p.add_argument("--out", default="runs/bench/dtypes.json", help="JSON output (and .md, .png)")
    return p


def _engines(model: str) -> dict:
    """bf16 and fp32 engines as served, plus each dtype unpacked where packing applies."""
    import quietstar
    from server.engine import Engine, EngineConfig

    engines = {}
    for dtype in DTYPES:
        config = EngineConfig(model=model, dtype=dtype, max_num_seqs=8, max_model_len=2048)
        engines[dtype] = Engine(config)
        if can_prepack(getattr(torch, dtype))[0]:
            plain = quietstar.load(model, dtype)
            plain.backbone.fuse_for_inference(prepack=False)
            engines[dtype + PLAIN] = Engine(config, model=plain)
    return engines


class Workloads:
    """Each method: seconds for one run of one kind of work on `engine`."""

    def __init__(self, args):
        self.args, self.n = args, 0
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def decode(self, engine, streams: int, thoughts: bool) -> float:
        from server.engine import SamplingParams, ThoughtParams

        L = self.args.thought_tokens
        th = ThoughtParams(enabled=thoughts, num_tokens=L if thoughts else None)
        tokens = self.args.tokens if not thoughts else max(4, self.args.tokens // 4)
        params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, thoughts=th)
        prompt = engine.tokenizer.encode(PROMPT)
        for _ in range(streams):
            self.n += 1
            engine.add_request(f"d{self.n}", prompt, params)
        start = self.clock()
        while engine.has_unfinished():
            engine.step()
        return (self.clock() - start) / (streams * tokens)  # seconds per visible token

    def context(self, engine) -> list[int]:
        ids = engine.tokenizer.encode(PROMPT)
        return (ids * (self.args.context // len(ids) + 1))[: self.args.context]

    def prefill(self, engine) -> float:
        from server.engine import SamplingParams

        self.n += 1
        engine.add_request(f"p{self.n}", self.context(engine), SamplingParams(max_tokens=1))
        start = self.clock()
        while engine.has_unfinished():
            engine.step()
        return self.clock() - start

    def score(self, engine) -> float:
        from server.engine import ThoughtParams

        th = ThoughtParams(enabled=True, num_tokens=self.args.thought_tokens)
        start = self.clock()
        engine.score(self.context(engine), th, 0, 0)
        return self.clock() - start


def measure(args) -> list[dict]:
    engines = _engines(args.model)
    w = Workloads(args)
    kinds = {
        "1 stream, thoughts off (s/token)": lambda e: w.decode(e, 1, False),
        "8 streams, thoughts off (s/token)": lambda e: w.decode(e, 8, False),
        "1 stream, thoughts on (s/visible token)": lambda e: w.decode(e, 1, True),
        "8 streams, thoughts on (s/visible token)": lambda e: w.decode(e, 8, True),
        f"prefill {args.context} tokens (s)": w.prefill,
        f"thought-aided scoring of {args.context} tokens (s)": w.score,
    }
    for e in engines.values():  # warm-up: first calls pay for allocation and kernel selection
        w.decode(e, 1, False)
    rows = []
    for name, fn in kinds.items():
        times = {d: [] for d in engines}
        for _ in range(args.repeats):
            for variant, engine in engines.items():
                times[variant].append(fn(engine))
        med = {d: statistics.median(t) for d, t in times.items()}
        best = min(DTYPES, key=med.get)  # between the dtypes as served
        ratio = med["float32"] / med["bfloat16"]
        rows.append(dict(name=name, seconds=med, fp32_over_bf16=ratio, best=best))
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in med.items()) + f" -> {best}")
    return rows


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        f"CPU flags: {env['cpu_flags']}; kernels: {env['cpu_kernels']}; "
        f"auto picks {env['auto']} ({env['auto_reason']}); torch {env['torch']}, "
        f"{env['threads']} threads, {env['clock']} seconds, {env['date']}",
        "",
    ]
    variants = list(rows[0]["seconds"])
    lines += [
        "| work | " + " | ".join(variants) + " | fp32 ÷ bf16 time | faster |",
        "|---|" + "---:|" * (len(variants) + 1) + "---|",
    ]
    lines += [
        f"| {r['name']} | "
        + " | ".join(f"{r['seconds'][v]:.4f}" for v in variants)
        + f" | {r['fp32_over_bf16']:.2f} | {r['best']} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], env: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = [r["name"] for r in rows]
    ratios = [r["fp32_over_bf16"] for r in rows]
    colors = ["tab:orange" if r > 1 else "tab:blue" for r in ratios]
    ax.barh(names, [r - 1 for r in ratios], left=1.0, color=colors)  # bars grow from 1 either way
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("fp32 time ÷ bf16 time  (> 1: bf16 faster)")
    ax.set_title(f"{env['cpu_kernels']}; auto = {env['auto']}", fontsize=10)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import transformers

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    auto = resolve_dtype("auto", "cpu")
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_flags": cpu_flags(),
        "cpu_kernels": probe_cpu().describe(),
        "auto": auto.name,
        "auto_reason": auto.reason,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "clock": args.clock,
        "model": args.model,
    }
    rows = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, env))
    plot(rows, env, out.with_suffix(".png"))
    print(markdown(rows, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
