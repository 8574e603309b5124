"""Run outputs: per-example JSONL (flushed per record, resumable by example id) and summaries.

A run folder holds `run.json` (the settings a resume must match), `results.jsonl`,
`summary.json` and `summary.md`.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clients.config import EvalConfig, EvalError
from clients.scoring import wilson_interval

logger = logging.getLogger(__name__)

RESULTS, RUN, SUMMARY_JSON, SUMMARY_MD = "results.jsonl", "run.json", "summary.json", "summary.md"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class ResultsFile:
    """Append-only JSONL of finished examples; `records` maps example id -> record."""

    def __init__(self, directory: Path, fingerprint: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        check_fingerprint(directory / RUN, fingerprint)
        self.path = directory / RESULTS
        self.records = read_records(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records[record["id"]] = record

    def close(self) -> None:
        self._file.close()


def check_fingerprint(path: Path, fingerprint: dict[str, Any]) -> None:
    """Refuse to mix results of different settings in one folder; record them on first use."""
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(
            k for k in old.keys() | fingerprint.keys() if old.get(k) != fingerprint.get(k)
        )
        if changed:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
            raise EvalError(
                f"{path.parent} holds results of other settings ({diff}); use another --out"
            )
        return
    path.write_text(json.dumps(fingerprint, indent=2) + "\n", encoding="utf-8")


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records by id; a line cut short by a kill is dropped and the file rewritten."""
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = {}
    broken = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[str(record["id"])] = record
        except (ValueError, KeyError, TypeError):
            broken += 1
    if broken:
        logger.warning("%s: dropped %d unreadable line(s) (interrupted write?)", path, broken)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()))
        tmp.replace(path)
    if records:
        logger.info("%s: resuming, %d example(s) already done", path, len(records))
    return records


def summarize(
    records: list[dict[str, Any]],
    config: EvalConfig,
    *,
    model: str,
    models_answer: dict[str, Any] | None,
    wall_time_s: float,
    n_new: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Accuracy (mean score) with its 95 % Wilson interval, plus everything needed to redo it."""
    n = len(records)
    accuracy = statistics.fmean(r["score"] for r in records) if records else 0.0
    low, high = wilson_interval(accuracy, n)
    summary: dict[str, Any] = {
        "task": config.task,
        "protocol": config.protocol,
        "label": config.label,
        "thoughts": config.thoughts,
        "thought_tokens": config.thought_tokens,
        "thought_content": config.thought_content,
        "model": model,
        "n": n,
        "n_new": n_new,
        "accuracy": accuracy,
        "ci95": [low, high],
        "n_correct": sum(r.get("correct") is True for r in records),
        "no_answer": sum(
            r.get("response") is not None and r.get("extracted") is None for r in records
        ),
    }
    if config.protocol == "loglik":
        summary["acc_norm"] = (
            statistics.fmean(r["correct_norm"] for r in records) if records else 0.0
        )
    usage_keys = ("prompt_tokens", "completion_tokens", "reasoning_tokens")
    summary["usage"] = {k: sum(r.get("usage", {}).get(k, 0) for r in records) for k in usage_keys}
    latencies = [r["latency_s"] for r in records]
    summary["mean_latency_s"] = statistics.fmean(latencies) if latencies else None
    return summary | {
        "wall_time_s": wall_time_s,
        "base_url": config.base_url,
        "data": config.data_file or "hub",
        "config": config.public(),
        "models": models_answer,
        "git_revision": git_revision(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out_dir),
    }


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out_dir / SUMMARY_MD).write_text(markdown_table([summary]) + "\n", encoding="utf-8")


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    """One row per run: accuracy in percent with its 95 % Wilson interval."""
    lines = [
        "| task | protocol | thoughts | model | n | accuracy | 95% CI | notes |",
        "| --- | --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for s in summaries:
        low, high = s["ci95"]
        notes = "soft (expected accuracy)" if s["protocol"] == "paper-soft" else ""
        if "acc_norm" in s:
            notes = f"acc_norm {100 * s['acc_norm']:.1f}%"
        elif s.get("no_answer"):
            notes = f"{s['no_answer']} without answer"
        lines.append(
            f"| {s['task']} | {s['protocol']} | {s['label']} | {s['model']} | {s['n']} "
            f"| {100 * s['accuracy']:.1f}% | {100 * low:.1f}–{100 * high:.1f}% | {notes} |"
        )
    return "\n".join(lines)


def git_revision() -> str | None:
    """`git rev-parse HEAD` of the project, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None
