"""benchmarks/online_serving.py against the app with a FakeEngine, served by uvicorn on a free
port (real streaming, so latencies are real): the report's counts, token rates, latency
percentiles, thought settings sent, and JSON + markdown output."""

from __future__ import annotations

import json

import httpx
import pytest

from benchmarks import online_serving
from tests.api.api_fakes import FakeEngine, make_app, serve_in_thread


def data_file(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_report_counts_rates_and_percentiles(tmp_path, capsys):
    engine = FakeEngine(step_s=0.005)
    app, _ = make_app(engine)
    out = tmp_path / "report"
    with serve_in_thread(app) as base:
        code = online_serving.main(
            [
                "--base-url",
                f"{base}/v1",
                "--concurrency",
                "1,2",
                "--num-requests",
                "4",
                "--max-tokens",
                "5",
                "--thought-tokens",
                "2",
                "--data-file",
                str(data_file(tmp_path)),
                "--out",
                str(out),
            ]
        )
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["model"] == "fake-model"
    assert report["server_models"]["data"][0]["id"] == "fake-model"
    assert [r["concurrency"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        assert (r["completed"], r["failed"]) == (4, 0)
        assert (r["visible_tokens"], r["thought_tokens"]) == (4 * 5, 4 * 5 * 2)
        assert r["total_tokens_per_s"] == pytest.approx(
            r["visible_tokens_per_s"] + r["thought_tokens_per_s"]
        )
        assert r["visible_tokens_per_s"] > 0 and r["request_throughput"] > 0
        assert 0 < r["p50_ttft_ms"] <= r["p90_ttft_ms"] <= r["p99_ttft_ms"]
        assert 4 <= r["p50_itl_ms"] <= r["p99_itl_ms"]  # the fake engine steps every 5 ms
        assert r["p50_e2e_ms"] >= r["p50_ttft_ms"] + 4 * 4
    # 2 levels x (1 warm-up + 4 timed) requests, every one streamed with the thought settings
    bodies = [params for _, _, params in engine.requests]
    assert len(bodies) == 10
    assert all(p.max_tokens == 5 and p.ignore_eos and p.thoughts.num_tokens == 2 for p in bodies)
    table = out.with_suffix(".md").read_text()
    assert "| concurrency |" in table and table in capsys.readouterr().out


def test_chat_endpoint_and_thoughts_off(tmp_path):
    engine = FakeEngine()
    app, _ = make_app(engine)
    code = online_serving.main(
        [
            "--base-url",
            "http://bench/v1",
            "--endpoint",
            "chat",
            "--concurrency",
            "2",
            "--num-requests",
            "3",
            "--max-tokens",
            "4",
            "--thoughts",
            "off",
            "--warmup",
            "0",
            "--data-file",
            str(data_file(tmp_path)),
        ],
        transport=httpx.ASGITransport(app=app),
    )
    assert code == 0  # also through the in-process transport
    assert [p.thoughts.enabled for _, _, p in engine.requests] == [False] * 3


def test_failures_are_reported(tmp_path, capsys):
    app, _ = make_app(FakeEngine())
    code = online_serving.main(
        [
            "--base-url",
            "http://bench/v1",
            "--concurrency",
            "1",
            "--num-requests",
            "2",
            "--thought-tokens",
            "999",
            "--data-file",
            str(data_file(tmp_path)),
        ],
        transport=httpx.ASGITransport(app=app),
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "| 1 | 0 / 2 |" in out and "HTTP 400" in out


def test_percentile_interpolates():
    assert online_serving.percentile([], 50) is None
    assert online_serving.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert online_serving.percentile([5.0], 99) == 5.0


@pytest.mark.slow  # a whole server start and stop (~13 s on an AVX2-only CPU): CI's slow half
def test_launch_starts_benches_and_stops_a_server(tiny_checkpoint, tmp_path):
    out = tmp_path / "launched"
    flags = f"--model {tiny_checkpoint} --dtype float32 --max-model-len 256 --num-threads 1"
    code = online_serving.main(
        ["--launch", flags, "--data-file", str(data_file(tmp_path)), "--concurrency", "2"]
        + ["--num-requests", "2", "--warmup", "0", "--max-tokens", "3", "--out", str(out)]
    )
    assert code == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["launch"] == flags
    (level,) = report["results"]
    assert level["completed"] == 2 and level["visible_tokens"] == 6
    port = int(report["config"]["base_url"].rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(httpx.HTTPError):  # stopped afterwards
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert "loading model" in out.with_suffix(".server.log").read_text()


def test_launch_reports_a_server_that_does_not_start(tmp_path, capsys):
    out = tmp_path / "bad"
    code = online_serving.main(["--launch", "--model default --port-typo 1", "--out", str(out)])
    assert code == 1
    assert "the server exited with 2" in capsys.readouterr().err
