"""End to end: `quietstar eval` against a real `quietstar serve` on the default model, a few
questions of the shared GSM8K / CommonsenseQA samples (scored, not tuned on)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("e2e") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                "--model",
                "default",
                "--port",
                str(port),
                "--max-model-len",
                "1024",
                "--max-num-seqs",
                "4",
                "--num-threads",
                "1",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, "server not healthy\n" + log.read_text()[-3000:]
                time.sleep(0.3)
            yield f"{base}/v1"
        finally:
            proc.terminate()
            proc.wait(30)


# Made-up questions in the original layouts, used where ../shared/data is not beside the clone.
FALLBACK = {
    "gsm8k/test_sample.jsonl": [
        {
            "question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
            "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}",
        }
        for a, b in ((3, 4), (10, 5), (7, 8))
    ],
    "commonsenseqa/dev_sample.jsonl": [
        {
            "answerKey": "B",
            "id": f"made-up-{i}",
            "question": {
                "question_concept": "rain",
                "stem": "What do people carry when it rains?",
                "choices": [
                    {"label": label, "text": text}
                    for label, text in zip(
                        "ABCDE", ("a spoon", "an umbrella", "a ladder", "a candle", "a fork")
                    )
                ],
            },
        }
        for i in range(2)
    ],
}


def _data(name: str, tmp_path: Path) -> Path:
    path = SHARED / name
    if path.is_file():
        return path
    fallback = tmp_path / Path(name).name
    fallback.write_text("".join(json.dumps(row) + "\n" for row in FALLBACK[name]))
    return fallback


def _eval(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "clients", *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summaries = list(out.rglob("summary.json"))
    assert summaries, f"no summary under {out}: {done.stderr[-2000:]}"
    return json.loads(summaries[0].read_text())


def _records(tmp_path: Path) -> list[dict]:
    (results,) = list((tmp_path / "run").rglob("results.jsonl"))
    return [json.loads(line) for line in results.read_text().splitlines()]


def test_gsm8k_direct_with_thoughts(endpoint, tmp_path):
    summary = _eval(
        tmp_path,
        "gsm8k",
        "--base-url",
        endpoint,
        "--limit",
        "3",
        "--data-file",
        str(_data("gsm8k/test_sample.jsonl", tmp_path)),
        "--protocol",
        "direct",
        "--thoughts",
        "on",
        "--thought-tokens",
        "2",
    )
    assert summary["n"] == 3 and 0.0 <= summary["accuracy"] <= 1.0
    records = _records(tmp_path)
    assert len(records) == 3
    assert all(r["response"] is not None and "gold" in r for r in records)
    assert sum(r["usage"].get("reasoning_tokens", 0) for r in records) > 0


def test_csqa_loglik_without_thoughts(endpoint, tmp_path):
    summary = _eval(
        tmp_path,
        "csqa",
        "--base-url",
        endpoint,
        "--limit",
        "2",
        "--data-file",
        str(_data("commonsenseqa/dev_sample.jsonl", tmp_path)),
        "--protocol",
        "loglik",
    )
    assert summary["n"] == 2
    assert all(len(r["extracted"]) == 1 and r["extracted"] in "ABCDE" for r in _records(tmp_path))
