"""`run_eval` end to end against a scripted fake endpoint (httpx.MockTransport): every
protocol, thought controls, resume, retries and the clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from clients import EvalConfig, EvalError, run_eval, run_sweep
from tests.clients.eval_fakes import FakeEndpoint


def evaluate(fake: FakeEndpoint, **settings: Any) -> dict[str, Any]:
    config = EvalConfig(**({"concurrency": 2} | settings))
    return run_eval(config, transport=fake.transport(), backoff_s=0.001)


def records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_gsm8k_direct(fake: FakeEndpoint, gsm8k_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = evaluate(fake, task="gsm8k", data_file=str(gsm8k_file), out=str(out))
    assert (summary["n"], summary["n_correct"], summary["accuracy"]) == (3, 2, pytest.approx(2 / 3))
    assert summary["model"] == "fake-model" and summary["protocol"] == "direct"
    assert summary["models"]["data"][0]["id"] == "fake-model"
    assert "git_revision" in summary and summary["wall_time_s"] > 0
    low, high = summary["ci95"]
    assert low < 2 / 3 < high
    assert json.loads((out / "summary.json").read_text())["n"] == 3
    assert (
        "| gsm8k | direct | thoughts=default | fake-model | 3 | 66.7% |"
        in (out / "summary.md").read_text()
    )
    by_id = {r["id"]: r for r in records(out)}
    assert by_id["test-1"] | {"latency_s": 0} == {
        "id": "test-1", "protocol": "direct", "label": "thoughts=default",
        "prompt": "Q: Tom has 10 apples and buys 8 more. How many apples?\nA:",
        "response": " 18", "thoughts": None, "extracted": "18", "gold": "18", "correct": True,
        "score": 1.0, "latency_s": 0, "usage": {"prompt_tokens": 10, "completion_tokens": 3},
    }  # fmt: skip
    assert by_id["test-3"]["extracted"] == "500" and by_id["test-3"]["correct"] is False
    for body in fake.completions():
        assert "thoughts" not in body  # unset: no thought controls, any endpoint works
        assert (body["model"], body["temperature"], body["seed"]) == ("fake-model", 0.0, 1234)


def test_thought_controls_and_returned_thoughts(fake, gsm8k_file, tmp_path) -> None:
    out = tmp_path / "on"
    summary = evaluate(
        fake, task="gsm8k", data_file=str(gsm8k_file), out=str(out), thoughts=True, thought_tokens=8
    )
    assert summary["label"] == "thoughts=on,tokens=8" and summary["usage"]["reasoning_tokens"] == 72
    assert all(
        b["thoughts"] == {"enabled": True, "include": True, "tokens": 8} for b in fake.completions()
    )
    assert all(r["thoughts"] == "<thought about it>" for r in records(out))
    fake.requests.clear()
    evaluate(
        fake, task="gsm8k", data_file=str(gsm8k_file), out=str(tmp_path / "off"), thoughts=False
    )
    assert all(b["thoughts"] == {"enabled": False} for b in fake.completions())


def test_paper_soft(fake, gsm8k_file, csqa_file, tmp_path) -> None:
    summary = evaluate(
        fake,
        task="gsm8k",
        protocol="paper-soft",
        data_file=str(gsm8k_file),
        out=str(tmp_path / "g"),
    )
    # fake: every echoed token p=0.5 with alternatives "7" (0.2) and "E" (0.1) -> digit 5/7
    scores = {r["id"]: r["score"] for r in records(tmp_path / "g")}
    assert scores["test-1"] == pytest.approx((5 / 7) ** 3)  # "1", "8", "\n"
    assert scores["test-2"] == pytest.approx(5 / 7)  # "7" is alone in its set; "\n" 5/7
    assert scores["test-3"] == pytest.approx((5 / 7) ** 4)  # "-" skipped; "5", "0", "0", "\n"
    assert summary["accuracy"] == pytest.approx(sum(scores.values()) / 3)
    assert all(b["echo"] and b["max_tokens"] == 0 for b in fake.completions())
    evaluate(
        fake, task="csqa", protocol="paper-soft", data_file=str(csqa_file), out=str(tmp_path / "c")
    )
    scores = {r["id"]: r["score"] for r in records(tmp_path / "c")}
    assert scores == {"q-river": pytest.approx((5 / 6) ** 2), "q-sky": pytest.approx(5 / 6)}


def test_cot_majority_vote(gsm8k_file, tmp_path) -> None:
    answers = {1234: " 18.", 1235: " 17", 1236: " 18 apples"}

    def reply(prompt: str, body: dict[str, Any]) -> str:
        if prompt.endswith("(arabic numerals) is"):
            return answers[body["seed"]] if "apples" in prompt else " 0"
        return " 10 + 8 = 18.\n\nQ: an invented next question"

    fake = FakeEndpoint(reply)
    out = tmp_path / "cot"
    summary = evaluate(fake, task="gsm8k", protocol="cot", votes=3, data_file=str(gsm8k_file),
                       out=str(out), limit=1)  # fmt: skip
    assert summary["accuracy"] == 1.0
    (record,) = records(out)
    assert record["votes"] == ["18", "17", "18"] and record["extracted"] == "18"
    assert record["response"][0].endswith("(arabic numerals) is 18.")
    bodies = fake.completions()
    assert len(bodies) == 6 and all(b["temperature"] == 0.9 for b in bodies)
    second = [b["prompt"] for b in bodies if b["prompt"].endswith("is")]
    assert second and all("invented" not in p and p.count("Q:") == 1 for p in second)


def test_csqa_loglik_and_chat(csqa_file, tmp_path) -> None:
    fake = FakeEndpoint(lambda prompt, body: "Banks are safest. The answer is (B).")
    fake.boost = {"bank", "blue"}
    summary = evaluate(
        fake, task="csqa", protocol="loglik", data_file=str(csqa_file), out=str(tmp_path / "l")
    )
    assert summary["accuracy"] == 1.0 and summary["acc_norm"] == 1.0
    assert {r["extracted"] for r in records(tmp_path / "l")} == {"B", "E"}
    assert len(fake.completions()) == 10 and all(b["logprobs"] == 1 for b in fake.completions())
    summary = evaluate(
        fake, task="csqa", protocol="chat", data_file=str(csqa_file), out=str(tmp_path / "c")
    )
    assert (summary["n_correct"], summary["n"]) == (1, 2)  # always "B": right for q-river only


def test_resume_only_does_the_rest(fake, gsm8k_file, tmp_path) -> None:
    out = tmp_path / "resume"

    def crash_on_third(prompt: str, body: dict[str, Any]) -> str:
        if "1,000" in prompt:
            raise httpx.ReadError("server died")
        return " 18" if "apples" in prompt else " 7"

    fake.reply = crash_on_third
    with pytest.raises(EvalError, match="failed 2 times"):
        evaluate(fake, task="gsm8k", data_file=str(gsm8k_file), out=str(out), concurrency=1,
                 max_retries=1)  # fmt: skip
    assert [r["id"] for r in records(out)] == ["test-1", "test-2"]
    with (out / "results.jsonl").open("a") as f:
        f.write('{"id": "test-3", "protocol": "dir')  # a write cut short by a kill
    fake.reply = lambda prompt, body: " -500"
    fake.requests.clear()
    summary = evaluate(fake, task="gsm8k", data_file=str(gsm8k_file), out=str(out))
    assert len(fake.completions()) == 1 and "1,000" in fake.completions()[0]["prompt"]
    assert (summary["n"], summary["n_new"], summary["n_correct"]) == (3, 1, 3)
    assert [r["id"] for r in records(out)] == ["test-1", "test-2", "test-3"]
    with pytest.raises(EvalError, match="other settings.*protocol"):
        evaluate(fake, task="gsm8k", protocol="chat", data_file=str(gsm8k_file), out=str(out))


def test_retries_on_429_5xx_and_timeouts(fake, gsm8k_file, tmp_path) -> None:
    fake.failures = [429, 503, httpx.ReadTimeout("slow"), 500]
    summary = evaluate(
        fake, task="gsm8k", data_file=str(gsm8k_file), out=str(tmp_path / "r"), concurrency=1
    )
    assert summary["n"] == 3 and len(fake.completions()) == 3 + 4
    fake.failures = [503] * 3
    with pytest.raises(EvalError, match="HTTP 503: try later.*after 2 retries"):
        evaluate(fake, task="gsm8k", data_file=str(gsm8k_file), out=str(tmp_path / "x"),
                 max_retries=2, concurrency=1)  # fmt: skip


def test_clear_errors(fake, gsm8k_file, csqa_file, tmp_path) -> None:
    with pytest.raises(EvalError, match=r"model 'nope' is not served.*fake-model"):
        evaluate(fake, task="gsm8k", model="nope", data_file=str(gsm8k_file), out=str(tmp_path))
    fake.failures = [401]
    with pytest.raises(EvalError, match="HTTP 401.*--api-key"):
        evaluate(fake, task="gsm8k", data_file=str(gsm8k_file), out=str(tmp_path / "a"))
    fake.logprobs = False
    with pytest.raises(EvalError, match="no prompt logprobs.*echo"):
        evaluate(
            fake, task="csqa", protocol="loglik", data_file=str(csqa_file), out=str(tmp_path / "b")
        )


def test_non_json_endpoint(gsm8k_file, tmp_path) -> None:
    html = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>hello</html>"))
    config = EvalConfig(task="gsm8k", base_url="http://x:8000", data_file=str(gsm8k_file))
    with pytest.raises(EvalError, match="did not answer JSON.*ending in /v1"):
        run_eval(config, transport=html)


def test_sweep_writes_one_labelled_folder_per_value(fake, gsm8k_file, tmp_path) -> None:
    from clients.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "gsm8k",
            "--data-file",
            str(gsm8k_file),
            "--out",
            str(tmp_path),
            "--thought-tokens",
            "off,2,4",
        ]
    )
    with pytest.raises(ValueError, match="sweep"):
        run_eval(args)
    summaries = run_sweep(args, transport=fake.transport(), backoff_s=0.001)
    assert [s["label"] for s in summaries] == [
        "thoughts=off",
        "thoughts=on,tokens=2",
        "thoughts=on,tokens=4",
    ]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "thoughts-2",
        "thoughts-4",
        "thoughts-off",
    ]
    tokens = [b["thoughts"].get("tokens") for b in fake.completions()]
    assert tokens == [None] * 3 + [2] * 3 + [4] * 3


def test_content_control_sweep_sends_thoughts_content(fake, gsm8k_file, tmp_path) -> None:
    """off, 0 (START -> END only) and 3 tokens with the model's and with random thoughts: four
    runs (random thoughts of no tokens would repeat the 0 run), one folder each; only the random
    run sends the control."""
    from clients.__main__ import build_parser

    argv = ["gsm8k", "--data-file", str(gsm8k_file), "--out", str(tmp_path)]
    argv += ["--thought-tokens", "off,0,3", "--thought-content", "model,random"]
    summaries = run_sweep(
        build_parser().parse_args(argv), transport=fake.transport(), backoff_s=0.001
    )
    assert [s["label"] for s in summaries] == [
        "thoughts=off",
        "thoughts=on,tokens=0",
        "thoughts=on,tokens=3",
        "thoughts=on,tokens=3,content=random",
    ]
    assert [s["thought_content"] for s in summaries] == ["model"] * 3 + ["random"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "thoughts-0",
        "thoughts-3",
        "thoughts-3-random",
        "thoughts-off",
    ]
    sent = [(b["thoughts"].get("tokens"), b["thoughts"].get("content")) for b in fake.completions()]
    per_run = [(None, None), (0, None), (3, None), (3, "random")]
    assert sent == [pair for pair in per_run for _ in range(3)]
