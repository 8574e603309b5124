"""`quietstar bench engine --compare-quantize none,int8,int4`: visible tok/s of quantised engines
side by side with the unquantised one, in one process.

One engine per variant on the same model; every repeat runs each variant in turn (A B C A B C).
A variant's ratio to the first is taken within each repeat (runs seconds apart, so the machine's
drift over minutes cancels) and the median of those ratios is reported, with their spread.
Rows: 1 request and 8 concurrent requests, thoughts off and on (greedy, EOS ignored).
"""

from __future__ import annotations

import statistics
import time

VARIANT_HELP = (
    "comma-separated variants to compare, the first being the baseline: none (unquantised), "
    "int8, int4, int4:G for group size G, or q4_1, each optionally @DTYPE to override --dtype "
    "(e.g. none@float32,int8@bfloat16,int4,q4_1)"
)
DTYPES = ("auto", "bfloat16", "float32")


def parse_variant(text: str, dtype: str = "bfloat16") -> tuple[str | None, int, str]:
    """'none' -> (None, 32, dtype); 'int4:64@float32' -> ('int4', 64, 'float32')."""
    body, _, override = text.strip().partition("@")
    mode, _, group = body.partition(":")
    if mode not in ("none", "int8", "int4", "q4_1") or (override and override not in DTYPES):
        raise ValueError(
            f"unknown variant {text!r} (none|int8|int4[:G]|q4_1, then @auto|@bfloat16|@float32)"
        )
    return (None if mode == "none" else mode), int(group or 32), override or dtype


class Variant:
    def __init__(self, name: str, args):
        import quietstar
        from server.engine import Engine, EngineConfig

        from .offline_throughput import PROMPT

        self.name = name
        mode, group, dtype = parse_variant(name, args.dtype)
        start = time.perf_counter()
        model = quietstar.load(
            args.model, dtype, args.device, quantize=mode, quantize_group_size=group
        )
        self.load_s = time.perf_counter() - start
        config = EngineConfig(model=args.model, dtype=dtype, device=args.device, max_num_seqs=8)
        self.engine = Engine(config, model=model)
        self.prompt = model.tokenizer.encode(PROMPT)
        self.ids = 0

    def run(self, n_requests: int, tokens: int, thoughts) -> float:
        """Visible tok/s over `n_requests` concurrent requests of `tokens` visible tokens."""
        from server.engine import SamplingParams

        params = SamplingParams(
            max_tokens=tokens, temperature=0, ignore_eos=True, thoughts=thoughts
        )
        for _ in range(n_requests):
            self.ids += 1
            self.engine.add_request(f"q{self.ids}", self.prompt, params)
        start = time.perf_counter()
        while self.engine.has_unfinished():
            self.engine.step()
        return n_requests * tokens / (time.perf_counter() - start)


def measure(args) -> list[dict]:
    from server.engine import ThoughtParams

    names = [v.strip() for v in args.compare_quantize.split(",") if v.strip()]
    variants = [Variant(name, args) for name in names]
    off = ThoughtParams()
    on = ThoughtParams(enabled=True, num_tokens=args.thought_tokens)
    cases = [
        ("1 request, thoughts off", 1, args.tokens, off),
        (f"1 request, thoughts on (L={args.thought_tokens})", 1, args.think_tokens, on),
        ("8 requests, thoughts off", 8, args.tokens, off),
        (f"8 requests, thoughts on (L={args.thought_tokens})", 8, args.think_tokens, on),
    ]
    for v in variants:  # warm-up
        v.run(1, 4, off)
    rows = []
    for case, n, tokens, thoughts in cases:
        rates: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                rates[v.name].append(v.run(n, tokens, thoughts))
        base = rates[variants[0].name]
        for v in variants:
            med = statistics.median(rates[v.name])
            ratios = [r / b for r, b in zip(rates[v.name], base)]
            ratio = statistics.median(ratios)
            spread = (max(ratios) - min(ratios)) / ratio
            row = dict(case=case, variant=v.name, tok_s=med, ratio=ratio, spread=spread)
            print(
                f"{case} | {v.name}: {med:.2f} visible tok/s, {ratio:.2f}x "
                f"(spread of the ratio {spread:.0%})",
                flush=True,
            )
            rows.append(row)
    for v in variants:
        rows.append(dict(case="load + quantise seconds", variant=v.name, tok_s=v.load_s))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | variant | visible tok/s (median) | ÷ baseline (median of paired ratios) "
        "| spread of the ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "ratio" in r:
            lines.append(
                f"| {r['case']} | {r['variant']} | {r['tok_s']:.2f} | {r['ratio']:.2f} "
                f"| {r['spread']:.0%} |"
            )
        else:
            lines.append(f"| {r['case']} | {r['variant']} | {r['tok_s']:.1f} s | | |")
    return "\n".join(lines)
