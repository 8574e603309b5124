"""`quietstar bench engine`: engine speed side by side with its baselines, in one process.

Every figure is a ratio of runs made in this process, alternated (A B A B ...): each repeat's
ratio is taken between the runs of that repeat, seconds apart, and the median of those ratios is
reported with their range, so that the machine's drift over minutes (20 % and more on shared
hosts) cancels instead of landing on one side. Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from quietstar.dtypes import DTYPE_CHOICES, cpu_flags, probe_cpu, resolve_dtype
from server.engine.config import COMPILE

from . import quant_throughput

PROMPT = (
    "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?\nA:"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quietstar bench engine", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="backbone dtype (auto: what `quietstar serve` picks on this device)",
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument(
        "--quantize",
        choices=["int8", "int4", "q4_1"],
        default=None,
        help="quantisation of the engine's model, as `quietstar serve --quantize` (default: none)",
    )
    p.add_argument(
        "--quantize-group-size", type=int, default=32, help="int4 only: columns per scale/zero"
    )
    p.add_argument(
        "--compare-quantize", default=None, metavar="LIST", help=quant_throughput.VARIANT_HELP
    )
    p.add_argument(
        "--compile",
        choices=COMPILE,
        default="off",
        help="torch.compile the engine's decode network, as `quietstar serve --compile`",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--tokens", type=int, default=64, help="visible tokens per thoughts-off run")
    p.add_argument("--thought-tokens", type=int, default=8, help="L for the thoughts-on runs")
    p.add_argument(
        "--think-tokens", type=int, default=12, help="visible tokens per thoughts-on run"
    )
    p.add_argument(
        "--context",
        type=int,
        default=256,
        help="context length for the official-style and scoring comparisons",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternated repeats per comparison (the median of their ratios is reported)",
    )
    p.add_argument("--out", default="runs/bench/engine.json", help="JSON output path")
    return p


class Bench:
    def __init__(self, args):
        import quietstar
        from server.engine import Engine, EngineConfig

        self.args = args
        self.model = quietstar.load(
            args.model,
            args.dtype,
            args.device,
            quantize=args.quantize,
            quantize_group_size=args.quantize_group_size,
        )
        self.engine = Engine(
            EngineConfig(
                model=args.model,
                dtype=args.dtype,
                device=args.device,
                quantize=args.quantize,
                quantize_group_size=args.quantize_group_size,
                max_model_len=2048,
                max_num_seqs=8,
                compile=args.compile,
            ),
            model=self.model,
        )
        self.prompt = self.model.tokenizer.encode(PROMPT)
        self.ids = 0
        self.last_prefill = 0.0  # seconds of the last run's first step

    def run(self, n_requests: int, tokens: int, thoughts=None, prompt=None) -> float:
        """Seconds for `n_requests` concurrent requests of `tokens` visible tokens each."""
        from server.engine import SamplingParams, ThoughtParams

        params = SamplingParams(
            max_tokens=tokens, temperature=0, ignore_eos=True, thoughts=thoughts or ThoughtParams()
        )
        for _ in range(n_requests):
            self.ids += 1
            self.engine.add_request(f"b{self.ids}", prompt or self.prompt, params)
        start = time.perf_counter()
        self.engine.step()  # the requests' prefill, batched
        self.last_prefill = time.perf_counter() - start
        while self.engine.has_unfinished():
            self.engine.step()
        return time.perf_counter() - start

    def hf_generate(self, tokens: int) -> float:
        x = torch.tensor([self.prompt], device=self.args.device)
        start = time.perf_counter()
        with torch.inference_mode():
            self.hf.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return time.perf_counter() - start


def alternate(repeats: int, *fns) -> list[list[float]]:
    """Run fns in turn `repeats` times; each fn's seconds, one per repeat."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            times[i].append(fn())
    return times


def paired(ratio, *times: list[float]) -> tuple[float, str]:
    """The median over repeats of ratio(*that repeat's seconds), and the range as text."""
    values = sorted(ratio(*repeat) for repeat in zip(*times))
    spread = f"range {values[0]:.2f}–{values[-1]:.2f}" if len(values) > 1 else "one repeat"
    return statistics.median(values), spread


def median(times: list[float]) -> float:
    return statistics.median(times)


class Rows(list):
    """Results, each printed as soon as it is measured (a long run shows its progress)."""

    def append(self, row: dict) -> None:
        super().append(row)
        print(
            f"{row['name']}: {row['value']:.2f} (target {row['target']}) {row['detail']}",
            flush=True,
        )


def measure(b: Bench) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from quietstar import reference
    from quietstar.parallel import parallel_thought_forward
    from server.engine import ThoughtParams

    a, L = b.args, b.args.thought_tokens
    rows = Rows()
    b.hf = AutoModelForCausalLM.from_pretrained(b.model.source, dtype=b.model.dtype).to(a.device)
    b.run(1, 8), b.hf_generate(8)  # warm-up
    eng, hf = alternate(a.repeats, lambda: b.run(1, a.tokens), lambda: b.hf_generate(a.tokens))
    value, spread = paired(lambda e, h: h / e, eng, hf)
    rows.append(
        dict(
            name="thoughts off, 1 request: engine tok/s ÷ transformers generate",
            value=value,
            target=">= 1.9",
            detail=f"engine {a.tokens / median(eng):.1f} tok/s, transformers "
            f"{a.tokens / median(hf):.1f} tok/s; {spread}",
        )
    )
    on1 = ThoughtParams(enabled=True, num_tokens=L)
    on4 = ThoughtParams(enabled=True, num_tokens=L, num_thoughts=4)
    prefill: dict[int, list[float]] = {1: [], 8: []}

    def thinking(n: int) -> float:
        seconds = b.run(n, a.think_tokens, on1)
        prefill[n].append(b.last_prefill)
        return seconds

    t1, t4, t_off, t8 = alternate(
        a.repeats,
        lambda: thinking(1),
        lambda: b.run(1, a.think_tokens, on4),
        lambda: b.run(1, a.tokens),
        lambda: thinking(8),
    )
    value, spread = paired(
        lambda on, off: (on / a.think_tokens) / ((L + 2) * off / a.tokens), t1, t_off
    )
    rows.append(
        dict(
            name=f"thoughts on (L={L}, K=1): time per visible token ÷ ((L+2) × thoughts-off)",
            value=value,
            target="<= 1.05",
            detail=f"{a.think_tokens / median(t1):.2f} visible tok/s; {spread}",
        )
    )
    value, spread = paired(lambda k4, k1: k4 / k1, t4, t1)
    rows.append(
        dict(name="K=4 ÷ K=1 time per visible token", value=value, target="<= 1.3", detail=spread)
    )
    value, spread = paired(lambda eight, one: 8 * one / eight, t8, t1)
    decode, _ = paired(lambda e, o, pe, po: 8 * (o - po) / (e - pe), t8, t1, prefill[8], prefill[1])
    share = median([p / t for p, t in zip(prefill[8], t8)])
    rows.append(
        dict(
            name="8 concurrent thought-on requests: aggregate visible tok/s ÷ 1 request",
            value=value,
            target=">= 6",
            detail=f"{8 * a.think_tokens / median(t8):.2f} visible tok/s; {spread}; the 8 prompts' "
            f"prefill is {share:.0%} of the 8-stream run, and after it the ratio is {decode:.2f}",
        )
    )
    ctx = (b.prompt * (a.context // len(b.prompt) + 1))[: a.context]
    n_off = 2
    g = torch.Generator().manual_seed(0)

    def official() -> float:
        return timed(lambda: reference.official_style_generate(b.model, ctx, n_off, L, g))

    ours, theirs = alternate(max(1, a.repeats - 1), lambda: b.run(1, n_off, on1, ctx), official)
    value, spread = paired(lambda o, t: t / o, ours, theirs)
    rows.append(
        dict(
            name=f"vs official-style inference at {a.context} tokens of context (L={L})",
            value=value,
            target=">= 30",
            detail=f"official {median(theirs) / n_off:.2f} s/token, engine "
            f"{median(ours) / n_off:.3f} s/token; {spread}",
        )
    )
    ids = torch.tensor([ctx])
    with torch.inference_mode():
        th = (
            parallel_thought_forward(b.model, ids, L, generator=torch.Generator().manual_seed(0))
            .thought_ids[0]
            .tolist()
        )

    def par() -> float:
        return timed(lambda: b.engine.score(ctx, ThoughtParams(enabled=True, num_tokens=L), 0, 0))

    def loop() -> float:
        return timed(lambda: reference.score_per_position(b.model, ctx, th))

    (tp,), (tl,) = alternate(1, par, loop)
    rows.append(
        dict(
            name=f"parallel scoring of {a.context} tokens ÷ per-position loop (L={L})",
            value=tl / tp,
            target=">= 10",
            detail=f"parallel {tp:.2f} s, per-position loop {tl:.1f} s",
        )
    )
    return rows


def timed(fn) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    return time.perf_counter() - start


def environment(args) -> dict:
    import transformers

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "dtype": resolve_dtype(args.dtype, args.device).name,
        "dtype_asked": args.dtype,
        "device": args.device,
        "cpu_flags": cpu_flags(),
        "cpu_kernels": probe_cpu().describe(),
        "quantize": args.compare_quantize or args.quantize,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| measurement | ratio | target | detail |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['value']:.2f} | {r['target']} | {r['detail']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.compare_quantize:
        rows, table = quant_throughput.measure(args), quant_throughput.markdown
    else:
        rows, table = measure(Bench(args)), markdown
    env = environment(args)
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": env, "results": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0
