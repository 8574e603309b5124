"""The GPU check: on one CUDA device in a few minutes, run the engine and model-core tests there,
then time batch-1 decode steps (CUDA graphs off and on) against the weight-bytes / HBM-bandwidth
floor, step time against the number of rows, thoughts-on tok/s at 1 and 8 streams, and one
Quiet-STaR training step, on random-weight models of the default model's and a 7B Mistral's
shape. Writes gpu_check.json and gpu_check.md to --out ($OUT, else runs/gpu_check).

Each section runs in its own try/except (an error is recorded and the next section runs) within a
global time budget, and the results files are rewritten after every section. `--dry` runs the
same code on the CPU with tiny shapes in seconds (the test suite does, so the script never rots).
Run it as `bash benchmarks/gpu_check.sh [--dry]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

import quietstar
from benchmarks import gpu_measure as measure
from benchmarks import gpu_report
from benchmarks.random_checkpoint import weight_bytes_per_step, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    """What one run measures: the full run on CUDA, or --dry's tiny stand-in on the CPU."""

    device: str
    budget_s: float
    default_shape: str
    large_shape: str
    rows: tuple[int, ...]
    warmup: int
    steps: int
    repeats: int
    thought_visible_tokens: int
    copy_bytes: int
    shard_bytes: int
    train_args: tuple[str, ...]
    tests_args: tuple[str, ...]
    threads: int | None  # torch CPU threads, here and in the subprocesses (None: torch's default)
    needs_scale: float  # x SECTIONS[name]: the budget a section needs before it starts


FULL = Settings(
    device="cuda",
    budget_s=420,
    default_shape="smollm2-135m",
    large_shape="mistral-7b",
    rows=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    warmup=5,
    steps=30,
    repeats=3,
    thought_visible_tokens=32,
    copy_bytes=2 << 30,
    shard_bytes=4 << 30,
    train_args=("--max-steps", "3"),
    tests_args=(),
    threads=None,
    needs_scale=1.0,
)
DRY = Settings(
    device="cpu",
    budget_s=120,
    default_shape="tiny-llama",
    large_shape="tiny-mistral",
    rows=(1, 2, 4),
    warmup=2,
    steps=1,
    repeats=1,
    thought_visible_tokens=2,
    copy_bytes=1 << 20,
    shard_bytes=64 << 10,  # several shards, so the index path is exercised too
    train_args=(
        *("--max-steps", "2", "--seq-len", "24", "--batch-size", "2"),
        *("--n-ahead", "5", "--n-ahead-talk", "2"),
    ),
    tests_args=("--collect-only",),  # with the GPU machine's missing packages hidden
    threads=1,  # tiny shapes: one thread is fastest, above all on a busy machine
    needs_scale=0.1,
)
# The sections in the order they run, each with the seconds of budget it needs to start
# (x Settings.needs_scale).
SECTIONS = {
    "environment": 0,
    "tests": 30,
    "bandwidth": 5,
    "batch1_default_shape": 20,
    "rows_sweep": 30,
    "thoughts_on": 20,
    "training_step": 40,
    "batch1_large_shape": 90,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__)
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, seconds (the test suite)")
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "runs" / "gpu_check"),
        help="results folder (default: $OUT, else runs/gpu_check)",
    )
    p.add_argument(
        "--budget-s", type=float, help="global time budget in seconds (default 420; dry 120)"
    )
    p.add_argument(
        "--work", help="scratch folder for the random checkpoints (default: a new temp folder)"
    )
    p.add_argument(
        "--only", help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})"
    )
    return p


class Check:
    """Runs the sections in order, each guarded, and keeps the results files current."""

    def __init__(self, settings: Settings, out: Path, work: Path, only: set[str]):
        self.s, self.out, self.work, self.only = settings, out, work, only
        self.start = time.perf_counter()
        self.results: dict = {"meta": gpu_report.meta(settings), "sections": {}}
        self.model = None  # the default-shape model, loaded once for the engine sections
        self.checkpoints: dict[str, Path] = {}
        name = self.results["meta"]["device_name"]
        self.bandwidths: dict[str, float | None] = {"datasheet": measure.datasheet_bandwidth(name)}

    def left(self) -> float:
        return self.s.budget_s - (time.perf_counter() - self.start)

    def run(self, name: str, needs_s: float) -> None:
        if name not in self.only:
            return
        elapsed = time.perf_counter() - self.start
        print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
        entry: dict = {"status": "ok"}
        if self.left() < needs_s * self.s.needs_scale:
            entry = {"status": "skipped", "reason": f"{self.left():.0f} s of budget left"}
        else:
            t0 = time.perf_counter()
            try:
                entry["data"] = getattr(self, name)()
            except Exception as e:  # noqa: BLE001 - record it and carry on with the next section
                entry = {"status": "error", "error": f"{type(e).__name__}: {e}"}
                entry["traceback"] = traceback.format_exc()[-3000:]
            entry["seconds"] = time.perf_counter() - t0
        self.results["sections"][name] = entry
        self.results["meta"]["elapsed_s"] = time.perf_counter() - self.start
        gpu_report.write(self.results, self.out)
        print(f"[{time.perf_counter() - self.start:6.1f} s] {name}: {gpu_report.brief(entry)}")

    # ------------------------------------------------------------ sections

    def environment(self) -> dict:
        return gpu_report.environment(self.s.device)

    def tests(self) -> dict:
        """The engine and model-core tests on the device, in a fresh interpreter without the
        packages the GPU machine lacks (`--dry`: collection only)."""
        log = self.out / "gpu_tests.log"
        junit = self.work / "tests.xml"
        cmd = [sys.executable, "-m", "benchmarks.gpu_machine", "--hide", "tests", "-q"]
        cmd += ["-p", "no:cacheprovider", *self.s.tests_args, f"--junitxml={junit}"]
        env = self.child_env() | {"QUIETSTAR_TEST_DEVICE": self.s.device}
        timeout = max(30.0, min(200.0, self.left() - 200))
        with log.open("w") as f:
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
                )
                code = proc.returncode
            except subprocess.TimeoutExpired:
                code = f"timed out after {timeout:.0f} s"
        return gpu_report.test_summary(cmd, code, log, junit)

    def bandwidth(self) -> dict:
        measured = measure.copy_bandwidth(self.s.device, self.s.copy_bytes, 5)
        self.bandwidths["measured_copy"] = measured["bytes_per_s"]
        data = {"device_name": self.results["meta"]["device_name"]}
        data["datasheet_bytes_per_s"] = self.bandwidths["datasheet"]
        return data | {f"copy_{k}": v for k, v in measured.items()}

    def batch1_default_shape(self) -> dict:
        return self._batch1(self.default_model())

    def rows_sweep(self) -> dict:
        s = self.s
        return measure.rows_sweep(
            self.default_model(), s.device, list(s.rows), 16, s.warmup, s.steps
        )

    def thoughts_on(self) -> dict:
        s = self.s
        tokens, model = s.thought_visible_tokens, self.default_model()
        return measure.thoughts_on(model, s.device, [1, 8], tokens, s.repeats, s.warmup, s.steps)

    def training_step(self) -> dict:
        checkpoint = self.checkpoint(self.s.default_shape)
        timeout = max(30.0, self.left() - 60)
        args = list(self.s.train_args)
        data = measure.training_step(checkpoint, self.work, args, timeout, self.child_env())
        return {"shape": self.s.default_shape} | data

    def batch1_large_shape(self) -> dict:
        self.model = None
        measure.free(self.s.device)
        t0 = time.perf_counter()
        directory = self.checkpoint(self.s.large_shape)
        t1 = time.perf_counter()
        model = quietstar.load(directory, dtype=torch.bfloat16, device=self.s.device)
        times = {"checkpoint_write_s": t1 - t0, "load_s": time.perf_counter() - t1}
        try:
            return self._batch1(model) | times
        finally:
            model = None
            shutil.rmtree(directory, ignore_errors=True)  # ~15 GB of disk for the 7B shape
            self.checkpoints.pop(self.s.large_shape)

    # ------------------------------------------------------------ helpers

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        if self.s.threads:
            env["OMP_NUM_THREADS"] = str(self.s.threads)
        return env

    def _batch1(self, model) -> dict:
        weight_bytes = weight_bytes_per_step(model)
        data = {"shape": Path(model.source).name, "dtype": str(model.dtype)}
        data |= {"weight_bytes": weight_bytes} | measure.bound(weight_bytes, self.bandwidths)
        data |= measure.batch1_step(model, self.s.device, 16, self.s.warmup, self.s.steps)
        return data

    def checkpoint(self, shape: str) -> Path:
        """The random checkpoint of `shape`, written once (weights drawn on the device)."""
        if shape not in self.checkpoints:
            t0 = time.perf_counter()
            self.checkpoints[shape] = write_random_checkpoint(
                self.work / shape,
                shape,
                torch.bfloat16,
                self.s.device,
                shard_bytes=self.s.shard_bytes,
            )
            print(f"  wrote random {shape} checkpoint in {time.perf_counter() - t0:.1f} s")
        return self.checkpoints[shape]

    def default_model(self):
        if self.model is None:
            directory = self.checkpoint(self.s.default_shape)
            self.model = quietstar.load(directory, dtype=torch.bfloat16, device=self.s.device)
        return self.model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DRY if args.dry else FULL
    if args.budget_s is not None:
        settings = Settings(**{**settings.__dict__, "budget_s": args.budget_s})
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        build_parser().error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="quietstar-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if settings.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry for the CPU stand-in", file=sys.stderr)
        return 2
    check = Check(settings, out, work, only)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads or threads)
    try:
        for name, needs_s in SECTIONS.items():
            check.run(name, needs_s)
    finally:
        torch.set_num_threads(threads)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(gpu_report.markdown(check.results))
    print(gpu_report.summary(check.results))
    print(f"results: {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return gpu_report.exit_code(check.results)


if __name__ == "__main__":
    sys.exit(main())
