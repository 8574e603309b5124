"""Online serving benchmark: concurrent streaming requests against any OpenAI-compatible endpoint.

Prompts are GSM8K questions, outputs have a fixed length (`max_tokens` with `ignore_eos`), and
each concurrency level reports TTFT, inter-token latency (gaps between streamed chunks that carry
text) and end-to-end latency percentiles, request throughput, and visible / thought / total
tokens per second. Thought tokens come from `usage.completion_tokens_details.reasoning_tokens`
(stream_options.include_usage); visible tokens = completion_tokens - reasoning_tokens, which is
also right for servers that report no reasoning tokens. Talks HTTP only (httpx); imports nothing
from the project.

    python -m benchmarks.online_serving --base-url http://127.0.0.1:8000/v1 --concurrency 1,8
    quietstar bench serve --launch "--model default --replicas 2" --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"
PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None = None
    e2e: float | None = None
    itl: list[float] = field(default_factory=list)
    visible_tokens: int = 0
    thought_tokens: int = 0
    error: str | None = None


def add_round_flags(p: argparse.ArgumentParser, max_tokens: int) -> None:
    """The load flags of the scripts that alternate several servers in rounds."""
    p.add_argument("--rounds", type=int, default=2, help="alternated rounds (median reported)")
    p.add_argument("--num-requests", type=int, default=8, help="requests per concurrency level")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="visible tokens per request")
    p.add_argument("--concurrency", default="1,8", help="comma-separated stream counts")
    p.add_argument(
        "--data-file",
        type=Path,
        default=DEFAULT_DATA,
        help="GSM8K-style JSONL of prompts (as `bench serve`)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quietstar bench serve", description=__doc__.split("\n")[0])
    target = p.add_argument_group("target")
    target.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000/v1",
        help="OpenAI-compatible base URL (ending in /v1)",
    )
    target.add_argument("--model", default=None, help="model id (default: the first of /models)")
    target.add_argument("--api-key", default=None, help="bearer token, if the server needs one")
    target.add_argument(
        "--endpoint",
        choices=("completions", "chat"),
        default="completions",
        help="which API to load",
    )
    target.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    target.add_argument(
        "--launch",
        default=None,
        metavar="FLAGS",
        help="start `quietstar serve FLAGS` on a free port (e.g. '--model default --replicas 2'), "
        "wait for /health ok, bench it instead of --base-url, then stop it; log: OUT.server.log",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--concurrency",
        default="1,8",
        help="comma-separated numbers of concurrent streams, one run each",
    )
    load.add_argument("--num-requests", type=int, default=16, help="requests per concurrency level")
    load.add_argument("--warmup", type=int, default=1, help="untimed requests before each level")
    load.add_argument(
        "--data-file",
        type=Path,
        default=DEFAULT_DATA,
        help="GSM8K-style JSONL; each line's `question` is a prompt",
    )
    load.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="visible tokens per request (sent with ignore_eos: true)",
    )
    load.add_argument("--seed", type=int, default=0, help="seed of the prompt order and requests")
    thoughts = p.add_argument_group("thoughts (sent as the request's `thoughts` object)")
    thoughts.add_argument(
        "--thoughts",
        choices=("on", "off"),
        default=None,
        help="thoughts.enabled (unset: the server's default)",
    )
    thoughts.add_argument(
        "--thought-tokens", type=int, default=None, help="thoughts.tokens (implies --thoughts on)"
    )
    output = p.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write OUT.json and OUT.md (the table is printed either way)",
    )
    return p


def load_prompts(path: Path, count: int, seed: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    questions = [r["question"] for r in rows if r.get("question")]
    if not questions:
        raise ValueError(f"{path}: no `question` fields")
    random.Random(seed).shuffle(questions)
    return [questions[i % len(questions)] for i in range(count)]


def request_body(args: argparse.Namespace, model: str, prompt: str, seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 1.0,
        "seed": seed,
    }
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = f"Question: {prompt}\nAnswer:"
    if args.thoughts is not None or args.thought_tokens is not None:
        thoughts: dict[str, Any] = {"enabled": args.thoughts != "off"}
        if args.thought_tokens is not None:
            thoughts["tokens"] = args.thought_tokens
        body["thoughts"] = thoughts
    return body


def _has_text(choice: dict[str, Any]) -> bool:
    """A chunk carrying a token: text (possibly empty, unless it only closes the choice);
    chat's first chunk (the role) carries none."""
    delta = choice.get("delta")
    text = choice.get("text") if delta is None else delta.get("content")
    if text is None or (delta is not None and "role" in delta):
        return False
    return text != "" or choice.get("finish_reason") is None


async def one_request(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> RequestResult:
    start = time.perf_counter()
    last = None
    result = RequestResult(ok=False)
    try:
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return RequestResult(ok=False, error=f"HTTP {response.status_code}: {text[:200]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    result.ok = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    return RequestResult(ok=False, error=str(chunk["error"].get("message")))
                now = time.perf_counter()
                if any(_has_text(c) for c in chunk.get("choices") or []):
                    if last is None:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                usage = chunk.get("usage")
                if usage:
                    details = usage.get("completion_tokens_details") or {}
                    result.thought_tokens = int(details.get("reasoning_tokens") or 0)
                    result.visible_tokens = int(usage["completion_tokens"]) - result.thought_tokens
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        return RequestResult(ok=False, error=f"{type(e).__name__}: {e}")
    result.e2e = time.perf_counter() - start
    if not result.ok:
        result.error = "stream ended without [DONE]"
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(concurrency: int, results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    visible = sum(r.visible_tokens for r in ok)
    thought = sum(r.thought_tokens for r in ok)
    summary: dict[str, Any] = {
        "concurrency": concurrency,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "visible_tokens": visible,
        "thought_tokens": thought,
        "visible_tokens_per_s": visible / duration,
        "thought_tokens_per_s": thought / duration,
        "total_tokens_per_s": (visible + thought) / duration,
        "errors": sorted({r.error for r in results if r.error})[:5],
    }
    series = {
        "ttft_ms": [r.ttft * 1000 for r in ok if r.ttft is not None],
        "itl_ms": [g * 1000 for r in ok for g in r.itl],
        "e2e_ms": [r.e2e * 1000 for r in ok if r.e2e is not None],
    }
    for name, values in series.items():
        summary[f"mean_{name}"] = sum(values) / len(values) if values else None
        for q in PERCENTILES:
            summary[f"p{q}_{name}"] = percentile(values, q)
    return summary


async def run_level(
    http: httpx.AsyncClient,
    args: argparse.Namespace,
    model: str,
    concurrency: int,
    prompts: list[str],
) -> dict[str, Any]:
    path = "/chat/completions" if args.endpoint == "chat" else "/completions"
    for i in range(args.warmup):
        await one_request(http, path, request_body(args, model, prompts[i % len(prompts)], i))
    queue: asyncio.Queue = asyncio.Queue()
    for i, prompt in enumerate(prompts):
        queue.put_nowait((i, prompt))
    results: list[RequestResult] = []

    async def worker() -> None:
        while not queue.empty():
            i, prompt = queue.get_nowait()
            body = request_body(args, model, prompt, args.seed + i)
            results.append(await one_request(http, path, body))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(concurrency, results, time.perf_counter() - start)


async def run(
    args: argparse.Namespace, transport: httpx.AsyncBaseTransport | None = None
) -> dict[str, Any]:
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise ValueError("--concurrency needs positive integers, e.g. 1,8")
    prompts = load_prompts(args.data_file, args.num_requests, args.seed)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(levels) + 4)
    async with httpx.AsyncClient(
        base_url=args.base_url.rstrip("/"),
        headers=headers,
        timeout=args.timeout,
        limits=limits,
        transport=transport,
    ) as http:
        models = (await http.get("/models")).raise_for_status().json()
        model = args.model or models["data"][0]["id"]
        results = [await run_level(http, args, model, c, prompts) for c in levels]
    config = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k not in ("api_key", "out")
    }
    return {"config": {**config, "model": model}, "server_models": models, "results": results}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    thoughts = c["thoughts"] or ("on" if c["thought_tokens"] else "server default")
    lines = [
        f"# Online serving: {c['model']} via /{c['endpoint']}",
        "",
        f"{c['num_requests']} requests per level, {c['max_tokens']} visible tokens each "
        f"(ignore_eos), thoughts {thoughts}"
        + (f", {c['thought_tokens']} tokens" if c["thought_tokens"] else "")
        + ".",
        "",
        "| concurrency | ok / failed | req/s | visible tok/s | thought tok/s | total tok/s | "
        "TTFT p50 / p90 / p99 (ms) | ITL p50 / p90 / p99 (ms) | E2E p50 / p90 / p99 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        pcts = {
            m: " / ".join(_fmt(r[f"p{q}_{m}"]) for q in PERCENTILES)
            for m in ("ttft_ms", "itl_ms", "e2e_ms")
        }
        lines.append(
            f"| {r['concurrency']} | {r['completed']} / {r['failed']} | "
            f"{_fmt(r['request_throughput'], 2)} | {_fmt(r['visible_tokens_per_s'])} | "
            f"{_fmt(r['thought_tokens_per_s'])} | {_fmt(r['total_tokens_per_s'])} | "
            f"{pcts['ttft_ms']} | {pcts['itl_ms']} | {pcts['e2e_ms']} |"
        )
    errors = sorted({e for r in report["results"] for e in r["errors"]})
    if errors:
        lines += ["", "Errors seen: " + "; ".join(errors)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, transport: httpx.AsyncBaseTransport | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.thoughts == "off" and args.thought_tokens is not None:
        print("--thoughts off contradicts --thought-tokens", file=sys.stderr)
        return 2
    try:
        if args.launch is None:
            report = asyncio.run(run(args, transport))
        else:
            from benchmarks.launch import launched

            log = (args.out or Path("runs/bench/serve")).with_suffix(".server.log")
            with launched(args.launch, log) as args.base_url:
                report = asyncio.run(run(args, transport))
    except (OSError, ValueError, httpx.HTTPError) as e:
        print(f"online_serving: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    table = markdown(report)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(table)
    failed = sum(r["failed"] for r in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
