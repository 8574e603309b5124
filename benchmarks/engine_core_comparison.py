"""HTTP ÷ in-process engine: `quietstar serve` with the engine core in its own process (at two
thread counts) and on a thread of the HTTP process, against the bare Engine, alternated in
rounds (A B C ... A B C ...) so machine noise hits every side alike; medians are reported.

    python -m benchmarks.engine_core_comparison --rounds 2 --out runs/bench/engine-core
    # add another checkout's server as a side: --extra main=/path/to/checkout

Thoughts off, streamed completions (`quietstar bench serve`, its prompts and sampling), 1 and 8
streams. Prints a markdown table, writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import online_serving

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.engine_core_comparison", description=__doc__
    )
    p.add_argument("--model", default="default", help="`default` or a checkpoint directory")
    p.add_argument("--dtype", default="bfloat16", help="backbone dtype for every side")
    p.add_argument(
        "--threads",
        default="1",
        help="comma-separated torch thread counts for the engine and core-process sides",
    )
    online_serving.add_round_flags(p, max_tokens=128)
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also serve from another checkout (its `python -m server`, default flags)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench/engine-core"), help="output stem")
    p.add_argument(
        "--engine-threads",
        type=int,
        default=None,
        help="internal: measure the bare engine with this many threads, print JSON, exit",
    )
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_bench(args, name: str, tree: Path, flags: list[str], log_dir: Path) -> dict:
    """Start `python -m server` from `tree`, run `bench serve` against it, stop it."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--model", args.model, "--dtype", args.dtype]
    cmd += ["--port", str(port), "--max-num-seqs", "8", *flags]
    with open(log_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while True:
                assert proc.poll() is None, f"{name}: server exited, see {log.name}"
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{name}: not healthy in 600 s"
                time.sleep(0.5)
            bench = ["--base-url", f"http://127.0.0.1:{port}/v1", "--thoughts", "off"]
            bench += ["--concurrency", args.concurrency, "--num-requests", str(args.num_requests)]
            bench += ["--max-tokens", str(args.max_tokens), "--out", str(log_dir / name)]
            bench += ["--data-file", str(args.data_file)]
            assert online_serving.main(bench) == 0, f"{name}: requests failed"
            report = json.loads((log_dir / f"{name}.json").read_text())
            return {r["concurrency"]: r["visible_tokens_per_s"] for r in report["results"]}
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def engine_rates(args, threads: int) -> dict[int, float]:
    """The bare Engine (run in a fresh process) on the same prompts and sampling as `bench
    serve`: N requests, `streams` at a time."""
    import torch

    from server.engine import Engine, EngineConfig

    torch.set_num_threads(threads)
    engine = Engine(EngineConfig(model=args.model, dtype=args.dtype, max_num_seqs=8))
    questions = online_serving.load_prompts(args.data_file, args.num_requests, 0)
    prompts = [engine.tokenizer(f"Question: {q}\nAnswer:")["input_ids"] for q in questions]
    rates = {}
    for streams in [int(c) for c in args.concurrency.split(",")]:
        _run(engine, prompts[:1], 0, args.max_tokens)  # warm-up
        start = time.perf_counter()
        tokens = sum(
            _run(engine, prompts[i : i + streams], i, args.max_tokens)
            for i in range(0, len(prompts), streams)
        )
        rates[streams] = tokens / (time.perf_counter() - start)
    return rates


def _run(engine, prompts: list[list[int]], seed: int, max_tokens: int) -> int:
    from server.engine import SamplingParams

    for i, ids in enumerate(prompts):
        params = SamplingParams(
            max_tokens=max_tokens, temperature=1.0, seed=seed + i, ignore_eos=True
        )
        engine.add_request(f"r{seed}-{i}", ids, params)
    tokens = 0
    while engine.has_unfinished():
        tokens += sum(len(out.tokens) for out in engine.step())
    return tokens


def engine_side(args, threads: int) -> dict[int, float]:
    cmd = [sys.executable, "-m", "benchmarks.engine_core_comparison", "--engine-threads"]
    cmd += [str(threads), "--model", args.model, "--dtype", args.dtype]
    cmd += ["--num-requests", str(args.num_requests), "--max-tokens", str(args.max_tokens)]
    cmd += ["--concurrency", args.concurrency, "--data-file", str(args.data_file)]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def sides(args) -> dict[str, Any]:
    """name -> a function measuring {streams: visible tok/s}."""
    log_dir = args.out.parent / (args.out.name + "-runs")
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",")]
    runs: dict[str, Any] = {}
    for t in threads:
        runs[f"engine, {t} thread(s)"] = lambda t=t: engine_side(args, t)
    http = {
        f"HTTP, core process, {t} thread(s)": ["--engine-core", "process", "--num-threads", str(t)]
        for t in threads
    }
    http["HTTP, engine thread (old path), 1 thread"] = ["--engine-core", "thread"]
    for name, flags in http.items():
        tag = (
            name.split(", ", 1)[1]
            .replace(" ", "-")
            .replace(",", "")
            .replace("(", "")
            .replace(")", "")
        )
        runs[name] = lambda tag=tag, flags=flags: serve_and_bench(args, tag, ROOT, flags, log_dir)
    for extra in args.extra:
        name, _, tree = extra.partition("=")
        runs[f"HTTP, {name}"] = lambda name=name, tree=tree: serve_and_bench(
            args, name, Path(tree), [], log_dir
        )
    return runs


def lscpu_flags() -> str:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    present = [f for f in wanted if f" {f}" in flags]
    return ", ".join(present) or "no avx512f / amx"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine_threads is not None:
        print(json.dumps(engine_rates(args, args.engine_threads)))
        return 0
    runs = sides(args)
    measured: dict[str, list[dict[int, float]]] = {name: [] for name in runs}
    for round_ in range(args.rounds):
        for name, measure in runs.items():
            measured[name].append(measure())
            print(f"round {round_ + 1}: {name}: {measured[name][-1]}", flush=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    medians = {
        name: {c: statistics.median(r[c] for r in rs) for c in levels}
        for name, rs in measured.items()
    }
    best_engine = {c: max(medians[n][c] for n in medians if n.startswith("engine")) for c in levels}
    lines = [
        f"{args.num_requests} requests per level, {args.max_tokens} visible tokens each, thoughts "
        f"off, {args.dtype}, {args.rounds} alternated rounds (median); {os.cpu_count()} cores, "
        f"CPU flags: {lscpu_flags()}; {platform.python_version()}",
        "",
        "| side | " + " | ".join(f"{c} stream(s) tok/s | ÷ best engine" for c in levels) + " |",
        "|---|" + "---|---|" * len(levels),
    ]
    for name, m in medians.items():
        cells = " | ".join(f"{m[c]:.1f} | {m[c] / best_engine[c]:.2f}" for c in levels)
        lines.append(f"| {name} | {cells} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": {k: str(v) for k, v in vars(args).items()}, "runs": measured}
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
