"""The measurements of `benchmarks/gpu_check.py`, each a function returning a JSON-able dict.

Everything goes through the public engine surface (EngineConfig, Engine.add_request / step /
abort / has_unfinished), so what is timed is what `quietstar serve` runs. A step's time is its
wall time between two device synchronisations; the median over steps is reported.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from server.engine import Engine, EngineConfig, SamplingParams, ThoughtParams

ROOT = Path(__file__).resolve().parents[1]
# Thoughts-off engines: one thought row of a few tokens keeps the thought K/V space small.
SMALL = dict(max_model_len=256, max_thought_tokens=8, max_num_thoughts=1)
# Datasheet HBM bandwidths (bytes/s), matched against torch's device name.
HBM_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM: "NVIDIA H100 80GB HBM3"
)


def datasheet_bandwidth(device_name: str) -> float | None:
    for key, bandwidth in HBM_BANDWIDTH:
        if key in device_name:
            return bandwidth
    return None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def copy_bandwidth(device: str, nbytes: int, repeats: int) -> dict:
    """Device-to-device copy, bytes read + written per second (median of `repeats`)."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    return {"bytes": 2 * src.numel() * 4, "seconds": seconds, "bytes_per_s": 2 * nbytes / seconds}


# ---------------------------------------------------------------- engines


def graph_modes() -> list[str] | None:
    """The `cuda_graphs` settings EngineConfig accepts, or None when it has no such field."""
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    return ["off", "on"] if "cuda_graphs" in names else None


def make_engine(model, device: str, cuda_graphs: str | None = None, **settings):
    if cuda_graphs is not None:
        settings["cuda_graphs"] = cuda_graphs
    config = EngineConfig(model=model.source, dtype=dtype_name(model), device=device, **settings)
    return Engine(config, model=model)


def dtype_name(model) -> str:
    return str(model.dtype).removeprefix("torch.")


def prompt(length: int, seed: int = 0) -> list[int]:
    """Byte-tokenizer ids (specials and meta-tokens excluded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 259, (length,), generator=g).tolist()


def decode_step_ms(engine, rows: int, prompt_len: int, warmup: int, steps: int) -> float:
    """Median ms of a thoughts-off decode step with `rows` running sequences."""
    params = SamplingParams(max_tokens=warmup + steps + 2, temperature=0, ignore_eos=True)
    ids = [f"rows{rows}-{i}-{time.monotonic_ns()}" for i in range(rows)]
    for i, request_id in enumerate(ids):
        engine.add_request(request_id, prompt(prompt_len, seed=i), params)
    for _ in range(warmup):  # admission, prefill and the first steps (and graph capture)
        engine.step()
    running = getattr(engine, "num_running", rows)
    if running != rows:
        raise RuntimeError(f"{running} sequences running after {warmup} steps, expected {rows}")
    device = str(engine.model.device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        engine.step()
        sync(device)
        times.append(time.perf_counter() - start)
    drain(engine, ids)
    return 1e3 * statistics.median(times)


def drain(engine, request_ids: list[str]) -> None:
    for request_id in request_ids:
        engine.abort(request_id)
    while engine.has_unfinished():
        engine.step()


def batch1_step(model, device: str, prompt_len: int, warmup: int, steps: int) -> dict:
    """Batch-1 thoughts-off step time with CUDA graphs off and on (when the engine has them)."""
    modes = graph_modes()
    out: dict = {"cuda_graphs_setting": "available" if modes else "not available"}
    for mode in modes or [None]:
        key = f"step_ms_graphs_{mode or 'off'}"
        if mode == "on" and not device.startswith("cuda"):
            out[key] = "needs CUDA"
            continue
        try:
            engine = make_engine(model, device, mode, max_num_seqs=1, **SMALL)
            out[key] = decode_step_ms(engine, 1, prompt_len, warmup, steps)
        except Exception as e:  # noqa: BLE001 - one mode failing must not hide the other
            out[key] = f"error: {type(e).__name__}: {e}"
        engine = None
        free(device)
    if not modes:
        out["step_ms_graphs_on"] = "not available"
    return out


def bound(weight_bytes: int, bandwidths: dict[str, float | None]) -> dict:
    """Weight bytes / bandwidth: the floor of a batch-1 step that reads every weight once."""
    return {
        f"bound_ms_{name}": (1e3 * weight_bytes / bw if bw else None)
        for name, bw in bandwidths.items()
    }


def rows_sweep(model, device: str, rows: list[int], prompt_len: int, warmup: int, steps: int):
    engine = make_engine(model, device, max_num_seqs=max(rows), **SMALL)
    table = []
    for n in rows:
        ms = decode_step_ms(engine, n, prompt_len, warmup, steps)
        table.append({"rows": n, "step_ms": ms, "ms_per_row": ms / n})
        print(f"  rows {n:>4}: {ms:8.3f} ms/step", flush=True)
    return {"cuda_graphs": "engine default", "table": table}


def thoughts_on(
    model, device: str, streams: list[int], tokens: int, repeats: int, warmup: int, steps: int
) -> dict:
    """Visible and total (visible + thought) tok/s with thoughts on at each stream count, and
    what one visible token costs in thoughts-off steps (L + 2 is the floor: L thought tokens,
    then END, and a step that feeds the visible token fused with START)."""
    engine = make_engine(model, device, max_num_seqs=max(streams), max_model_len=256)
    L = getattr(engine, "default_thought_tokens", None) or model.config.thought_tokens
    params = SamplingParams(
        max_tokens=tokens, temperature=0, ignore_eos=True, thoughts=ThoughtParams(enabled=True)
    )

    def run(n: int) -> tuple[float, int]:
        ids = [f"s{n}-{i}-{time.monotonic_ns()}" for i in range(n)]
        for i, request_id in enumerate(ids):
            engine.add_request(request_id, prompt(16, seed=i), params)
        thought_tokens: dict[str, int] = {}
        start = time.perf_counter()
        while engine.has_unfinished():
            for out in engine.step():
                thought_tokens[out.request_id] = getattr(out, "num_thought_tokens", 0)
        return time.perf_counter() - start, sum(thought_tokens.values())

    run(1)  # warm-up (and graph capture)
    result: dict = {"thought_tokens_per_visible": L, "visible_tokens_per_stream": tokens}
    for n in streams:
        timed = sorted(run(n) for _ in range(repeats))
        seconds, thought = timed[len(timed) // 2]
        result[f"streams_{n}"] = {
            "seconds": seconds,
            "visible_tok_s": n * tokens / seconds,
            "total_tok_s": (n * tokens + thought) / seconds,
            "thought_tokens": thought,
        }
    first, last = result[f"streams_{streams[0]}"], result[f"streams_{streams[-1]}"]
    result["visible_speedup_last_vs_first"] = last["visible_tok_s"] / first["visible_tok_s"]
    off_ms = decode_step_ms(engine, 1, 16, warmup, steps)
    per_visible_ms = 1e3 * first["seconds"] / tokens
    result["thoughts_off_step_ms"] = off_ms
    result["visible_token_cost_in_off_steps"] = per_visible_ms / off_ms
    result["visible_token_cost_over_L_plus_2"] = per_visible_ms / ((L + 2) * off_ms)
    return result


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- training


def training_step(
    checkpoint: Path, work: Path, args: list[str], timeout: float, env: dict[str, str]
) -> dict:
    """`python -m training` (the CLI users run; here with the packages the GPU machine lacks
    hidden) for a few steps on random text; step times from its metrics.jsonl (the first step
    includes warm-up)."""
    data = work / "train.jsonl"
    words = "the cat sat on a mat and then 12 plus 30 is 42 so we add more apples".split()
    g = torch.Generator().manual_seed(0)
    with data.open("w") as f:
        for _ in range(64):
            picks = torch.randint(0, len(words), (400,), generator=g).tolist()
            f.write(json.dumps({"text": " ".join(words[i] for i in picks)}) + "\n")
    out = work / "train-run"
    argv = ["--model", str(checkpoint), "--data", str(data), "--out", str(out), *args]
    argv += ["--eval-every", "0", "--no-plot", "--save-every", "100000", "--warmup-steps", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_machine", "--hide", "run", "training", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"training exited {proc.returncode}: {proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") == "train"]
    later = [r["step_s"] for r in steps[1:]] or [steps[0]["step_s"]]
    return {
        "argv": argv,
        "steps": len(steps),
        "first_step_s": steps[0]["step_s"],
        "step_s": statistics.median(later),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps[1:] or steps),
        "loss": [r["loss"] for r in steps],
    }
