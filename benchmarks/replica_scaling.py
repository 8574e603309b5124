"""Ray Serve replicas: `quietstar bench serve --launch` against the plain server and against
`--replicas 1` / `--replicas 2` (engine core in a process, or on a thread, in each replica),
alternated in rounds (A B C ... A B C ...) so machine noise hits every side alike; medians.

    python -m benchmarks.replica_scaling --rounds 2 --out runs/bench/replicas

Reports visible tok/s at 1 and 8 streams, the proxy's overhead (replicas=1 through Ray ÷ the
plain server, 1 stream) and the scaling (replicas=2 ÷ replicas=1, 8 streams). Thoughts off,
streamed completions. Prints a markdown table, writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from benchmarks import online_serving
from benchmarks.engine_core_comparison import lscpu_flags

SIDES = {
    "plain server": "",
    "Ray, 1 replica": "--replicas 1",
    "Ray, 2 replicas": "--replicas 2",
    "Ray, 1 replica, thread core": "--replicas 1 --engine-core thread",
    "Ray, 2 replicas, thread core": "--replicas 2 --engine-core thread",
}
RATIOS = (  # (label, numerator side, denominator side, streams)
    ("proxy overhead: 1 replica ÷ plain, 1 stream", "Ray, 1 replica", "plain server", 1),
    ("1 replica ÷ plain, 8 streams", "Ray, 1 replica", "plain server", 8),
    ("scaling: 2 replicas ÷ 1, 8 streams", "Ray, 2 replicas", "Ray, 1 replica", 8),
    (
        "thread core: 2 replicas ÷ 1, 8 streams",
        "Ray, 2 replicas, thread core",
        "Ray, 1 replica, thread core",
        8,
    ),
    (
        "1 replica: thread ÷ process core, 1 stream",
        "Ray, 1 replica, thread core",
        "Ray, 1 replica",
        1,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replica_scaling", description=__doc__)
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    online_serving.add_round_flags(p, max_tokens=64)
    p.add_argument(
        "--sides",
        default=";".join(SIDES),
        help="semicolon-separated subset of: " + "; ".join(SIDES),
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench/replicas"), help="output stem")
    return p


def measure(args: argparse.Namespace, side: str, round_: int) -> dict[int, float]:
    stem = (
        args.out.parent
        / f"{args.out.name}-runs"
        / f"{side.replace(', ', '-').replace(' ', '_')}-{round_}"
    )
    flags = f"--model {args.model} --max-num-seqs 8 --replica-cpus 1 {SIDES[side]}"
    bench = ["--launch", flags, "--thoughts", "off", "--concurrency", args.concurrency]
    bench += ["--num-requests", str(args.num_requests), "--max-tokens", str(args.max_tokens)]
    bench += ["--data-file", str(args.data_file)]
    assert online_serving.main([*bench, "--out", str(stem)]) == 0, f"{side}: requests failed"
    report = json.loads(stem.with_suffix(".json").read_text())
    return {r["concurrency"]: r["visible_tokens_per_s"] for r in report["results"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sides = [s.strip() for s in args.sides.split(";")]
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        raise SystemExit(f"unknown side(s) {unknown}; known: {'; '.join(SIDES)}")
    measured: dict[str, list[dict[int, float]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides:
            measured[side].append(measure(args, side, round_))
            print(f"round {round_ + 1}: {side}: {measured[side][-1]}", flush=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    medians = {
        s: {c: statistics.median(r[c] for r in rs) for c in levels} for s, rs in measured.items()
    }
    lines = [
        f"{args.num_requests} requests per level, {args.max_tokens} visible tokens each, thoughts "
        f"off, dtype auto, max-num-seqs 8, 1 CPU (1 torch thread) per replica, {args.rounds} "
        f"alternated rounds (median); {os.cpu_count()} cores, CPU flags: {lscpu_flags()}; "
        f"Python {platform.python_version()}",
        "",
        "| side | " + " | ".join(f"{c} stream(s) visible tok/s (per round)" for c in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for side, m in medians.items():
        per_round = {c: ", ".join(f"{r[c]:.1f}" for r in measured[side]) for c in levels}
        lines.append(
            f"| {side} | " + " | ".join(f"{m[c]:.1f} ({per_round[c]})" for c in levels) + " |"
        )
    lines += ["", "| ratio (of medians; per round in brackets) | value |", "|---|---|"]
    ratios = {}
    for label, top, bottom, c in RATIOS:
        if top in medians and bottom in medians and c in levels:
            rounds = [a[c] / b[c] for a, b in zip(measured[top], measured[bottom])]
            ratios[label] = medians[top][c] / medians[bottom][c]
            lines.append(
                f"| {label} | {ratios[label]:.2f} ({', '.join(f'{r:.2f}' for r in rounds)}) |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: str(v) for k, v in vars(args).items()}
    report = {"config": config, "cpu_flags": lscpu_flags(), "runs": measured, "ratios": ratios}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
