"""End to end: a real `python -m server` subprocess (and its engine-core process) on a tiny random
checkpoint, driven with the official `openai` SDK (chat, streaming usage, n, stop, seeds,
logprobs, thoughts, reasoning effort, scoring), plus a dropped stream that frees its engine slot,
a clean SIGTERM exit, and a killed engine core that fails the stream and stops the server."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import make_hf_checkpoint

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint: Path, *flags: str) -> Iterator[tuple[subprocess.Popen, str, Any]]:
    port = free_port()
    log = open(checkpoint.parent / f"server-{port}.log", "w+b")  # noqa: SIM115 - read on failure
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "--model",
            str(checkpoint),
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            "256",
            "--max-num-seqs",
            "4",
            "--num-threads",
            "1",
            "--api-key",
            API_KEY,
            "--served-model-name",
            "tiny",
            *flags,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, _tail(log)
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "server not healthy in 120 s\n" + _tail(log)
            time.sleep(0.2)
        yield proc, base, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("real-server") / "tiny")


@pytest.fixture(scope="module")
def server_process(checkpoint) -> Iterator[tuple[subprocess.Popen, str, Any]]:
    with running_server(checkpoint) as running:
        yield running


@pytest.fixture(scope="module")
def server(server_process) -> str:
    return server_process[1]


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def chat(sdk: openai.OpenAI, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Hello!"}])
    kwargs.setdefault("model", "tiny")
    return sdk.chat.completions.create(**kwargs)


def reasoning_tokens(usage) -> int:
    return usage.completion_tokens_details.reasoning_tokens


def test_models_and_auth(server, sdk):
    card = sdk.models.list().data[0]
    assert card.id == "tiny" and card.model_extra["max_model_len"] == 256
    assert card.model_extra["quietstar"]["heads_trained"] is False
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        chat(sdk, model="gpt-4o", max_tokens=2)


def test_chat_and_usage(sdk):
    r = chat(sdk, max_tokens=6, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason in ("stop", "length")
    # untrained heads: thoughts off unless asked
    assert reasoning_tokens(r.usage) == 0 and r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_include_usage(sdk):
    chunks = list(
        chat(
            sdk,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"thoughts": {"tokens": 2}},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    visible = usage.completion_tokens - reasoning_tokens(usage)
    assert 1 <= visible <= 5 and reasoning_tokens(usage) == 2 * visible


def test_n_choices(sdk):
    r = chat(sdk, max_tokens=3, n=2, seed=1)
    assert [c.index for c in r.choices] == [0, 1]


def test_stop_string_cuts_the_text(sdk):
    free = chat(sdk, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    text = free.choices[0].message.content
    stop = next((ch for ch in text[1:] if ch.isascii() and ch.isalnum()), None)
    if stop is None:
        pytest.skip(f"greedy text has no ASCII letter to stop on: {text!r}")
    r = chat(sdk, max_tokens=24, temperature=0, stop=[stop], extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]


def test_seed_reproducibility_with_thoughts(sdk):
    body = {"thoughts": {"enabled": True, "tokens": 2}, "ignore_eos": True}
    a, b, c = (
        chat(sdk, max_tokens=12, temperature=1.0, seed=s, extra_body=body) for s in (42, 42, 7)
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content


def test_chat_logprobs(sdk):
    r = chat(sdk, max_tokens=4, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob


def test_thoughts_on_off_include(sdk):
    body = {
        "thoughts": {"enabled": True, "tokens": 3, "count": 2, "include": True},
        "ignore_eos": True,
    }
    on = chat(sdk, max_tokens=4, extra_body=body)
    message, choice = on.choices[0].message, on.choices[0]
    assert reasoning_tokens(on.usage) == 4 * 3 * 2
    assert isinstance(message.model_extra["reasoning"], str)
    entries = choice.model_extra["thoughts"]
    assert len(entries) == 4
    assert all(len(e["thought_ids"]) == 2 and len(e["thought_ids"][0]) == 3 for e in entries)
    assert all(len(e["mixing_weights"]) == 2 for e in entries)
    off = chat(sdk, max_tokens=4, extra_body={"thoughts": {"enabled": False, "include": True}})
    assert reasoning_tokens(off.usage) == 0
    assert off.choices[0].message.model_extra["reasoning"] is None
    hidden = chat(sdk, max_tokens=2, extra_body={"thoughts": {"tokens": 2}, "ignore_eos": True})
    assert reasoning_tokens(hidden.usage) == 4
    assert hidden.choices[0].message.model_extra["reasoning"] is None


def test_reasoning_effort(sdk):
    low = chat(sdk, max_tokens=3, reasoning_effort="low", extra_body={"ignore_eos": True})
    assert reasoning_tokens(low.usage) == 3 * 4  # default map: low = 4 thought tokens
    none = chat(sdk, max_tokens=3, reasoning_effort="none")
    assert reasoning_tokens(none.usage) == 0


def test_scoring_via_completions_echo(sdk):
    prompt = "The cat sat on the mat"
    for thoughts in (False, True):
        r = sdk.completions.create(
            model="tiny",
            prompt=prompt,
            max_tokens=0,
            echo=True,
            logprobs=2,
            extra_body={"thoughts": {"enabled": thoughts}},
        )
        lp = r.choices[0].logprobs
        assert r.choices[0].text == prompt and len(lp.tokens) == len(prompt)
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(v <= 0 for v in lp.token_logprobs[1:])
        assert all(len(t) <= 2 for t in lp.top_logprobs[1:])
        assert (reasoning_tokens(r.usage) > 0) is thoughts
    one = sdk.completions.create(
        model="tiny", prompt=[[5, 6, 7]], max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    assert len(one.choices[0].logprobs.tokens) == 4  # 3 prompt tokens + 1 generated


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    lines = text.splitlines()
    return float(next(line.split()[-1] for line in lines if line.startswith(name + " ")))


def test_dropped_stream_frees_the_engine_slot(server):
    body = {
        "model": "tiny",
        "prompt": "Once",
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
        "thoughts": {"tokens": 32},
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{server}/v1/completions", json=body, headers=headers) as response,
    ):
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        for _ in range(3):
            next(events)
        assert metric(server, "quietstar_num_requests_running") == 1
    deadline = time.monotonic() + 10
    while metric(server, "quietstar_num_requests_running") != 0:
        assert time.monotonic() < deadline, "the engine kept running the dropped request"
        time.sleep(0.05)
    assert metric(server, 'quietstar_requests_total{endpoint="completions",outcome="aborted"}') >= 1


def test_sigterm_drains_then_exits_cleanly(checkpoint):
    """SIGTERM: a short stream finishes within --shutdown-timeout, a long one is then aborted
    (through the engine-core process), and the server exits cleanly."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    flags = ("--shutdown-timeout", "2", "--max-thought-tokens", "128")
    with running_server(checkpoint, *flags) as (proc, base, log):
        long = {
            "model": "tiny",
            "prompt": "Once",
            "max_tokens": 240,
            "stream": True,
            "ignore_eos": True,
            "thoughts": {"tokens": 128, "count": 4},
        }  # 130 steps of 4 thought rows a token: far more than the 2 s drain, on any CPU
        short = {**long, "max_tokens": 16, "thoughts": {"enabled": False}}
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{base}/v1/completions", json=long, headers=headers) as r1,
            client.stream("POST", f"{base}/v1/completions", json=short, headers=headers) as r2,
        ):
            lines = r1.iter_lines()
            next(line for line in lines if line.startswith("data:"))
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line.startswith("data:")]
            short_events = [line for line in r2.iter_lines() if line.startswith("data:")]
        # uvicorn re-raises the signal after its graceful shutdown, so the status says SIGTERM
        assert proc.wait(30) in (0, -signal.SIGTERM)
        log.seek(0)
        text = log.read().decode(errors="replace")
        assert "aborting them" in text and "stopping the engine" in text, text[-3000:]
        assert "Finished server process" in text and "Traceback" not in text, text[-3000:]
    # the stream ended with an abort event, then [DONE]
    assert len(rest) >= 2 and '"code": "aborted"' in rest[-2] and rest[-1] == "data: [DONE]"
    assert short_events[-1] == "data: [DONE]"


def test_killed_engine_core_stops_the_server(server_process):
    """Kills the module's server: keep this the last test that uses `server`."""
    proc, base, log = server_process
    log.seek(0)
    pid = int(re.search(rb"engine core ready \(pid (\d+)", log.read()).group(1))
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 200, "stream": True}
    body.update(ignore_eos=True, thoughts={"tokens": 32})
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{base}/v1/completions", json=body, headers=headers) as response,
    ):
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        next(lines)
        os.kill(pid, signal.SIGKILL)
        rest = list(lines)
    assert len(rest) >= 2 and '"code": "engine_dead"' in rest[-2] and rest[-1] == "data: [DONE]"
    assert proc.wait(30) == 1
    assert "engine core process died (exit code -9)" in _tail(log)
