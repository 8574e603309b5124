"""The engine core in its own process, behind the real app (uvicorn on a thread, a real core
subprocess on a tiny random checkpoint): a stream across the boundary matches the in-process
engine; a refusal keeps its `param`; a disconnect or a stop string aborts in the core; a core
killed with SIGKILL turns /health to 503, fails in-flight requests with a 500 envelope, refuses
new ones, and stops the server. (SIGTERM's drain through the core: test_real_server.py.)"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

import quietstar
from server.api import build_app
from server.config import ServerConfig
from server.engine import (
    Engine,
    EngineConfig,
    EngineCoreClient,
    ModelInfo,
    RequestError,
    RequestLimits,
    SamplingParams,
    ThoughtParams,
)
from server.engine.output_processor import RequestText
from tests.api.api_fakes import serve_in_thread, sse_events
from tests.support import make_hf_checkpoint

TIMEOUT = httpx.Timeout(30.0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_hf_checkpoint(tmp_path_factory.mktemp("engine-core") / "tiny")


def engine_config(checkpoint: Path) -> EngineConfig:
    return EngineConfig(
        model=str(checkpoint), dtype="float32", max_model_len=256, max_num_seqs=4, num_threads=1
    )


@contextlib.contextmanager
def core_app(checkpoint: Path, **config) -> Iterator[tuple]:
    """(app, client, base URL, event loop) with the core process started and the app served."""
    engine = EngineCoreClient(engine_config(checkpoint))
    app = build_app(ServerConfig(engine=engine.config, served_model_name="tiny", **config), engine)
    try:
        with serve_in_thread(app) as base:
            loop = engine._tasks[0].get_loop()  # the server's event loop, for drain()
            yield app, engine, base, loop
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def served(checkpoint):
    with core_app(checkpoint) as running:
        yield running


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def completion(**body) -> dict:
    return {"model": "tiny", "prompt": [5, 6, 7, 8, 9], "ignore_eos": True, **body}


def test_stream_crosses_the_process_boundary_unchanged(served, checkpoint):
    _, core, base, _ = served
    thoughts = {"enabled": True, "tokens": 2, "count": 2, "include": True}
    body = completion(max_tokens=6, temperature=1.0, seed=3, logprobs=1, thoughts=thoughts)
    r = httpx.post(f"{base}/v1/completions", json={**body, "stream": True}, timeout=TIMEOUT)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    parts = [e["choices"][0] for e in events[:-1] if e["choices"]]
    streamed = [t for p in parts for t in p.get("thoughts") or []]
    # the same request on an in-process engine over the same checkpoint
    engine = Engine(engine_config(checkpoint), quietstar.load(checkpoint, dtype=torch.float32))
    params = SamplingParams(
        max_tokens=6,
        temperature=1.0,
        seed=3,
        ignore_eos=True,
        logprobs=1,
        thoughts=ThoughtParams(enabled=True, num_tokens=2, num_thoughts=2, include=True),
    )
    engine.add_request("x", [5, 6, 7, 8, 9], params)
    text, tokens = RequestText(engine.tokenizer, params), []
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in text.process(out).tokens]
    assert "".join(p["text"] for p in parts) == "".join(t.text for t in tokens)
    assert [s["token_id"] for s in streamed] == [t.token_id for t in tokens]
    assert [s["thought_ids"] for s in streamed] == [t.thought_ids for t in tokens]
    for s, t in zip(streamed, tokens):
        assert s["mixing_weights"] == pytest.approx(t.mixing_weights, abs=1e-5)
    logprobs = [lp for p in parts if p["logprobs"] for lp in p["logprobs"]["token_logprobs"]]
    assert logprobs == pytest.approx([t.logprob for t in tokens], abs=1e-4)
    assert core.num_running == 0


def test_model_info_crosses_the_boundary_typed(served, checkpoint):
    """The core's ModelInfo arrives as the typed object an in-process engine builds, and
    /v1/models shows its fields under the same names."""
    _, core, base, _ = served
    engine = Engine(engine_config(checkpoint), quietstar.load(checkpoint, dtype=torch.float32))
    local = ModelInfo.of(engine)
    assert isinstance(core.model_info, ModelInfo)
    assert dataclasses.replace(core.model_info, source=local.source) == local
    card = httpx.get(f"{base}/v1/models", timeout=TIMEOUT).json()["data"][0]
    info = dataclasses.asdict(core.model_info)
    assert card["max_model_len"] == info.pop("max_model_len") == 256
    assert {k: card["quietstar"][k] for k in info} == {
        **info,
        "trained_thought_tokens": list(info["trained_thought_tokens"]),
    }


def test_a_refusal_in_the_core_keeps_its_param(served):
    app, core, base, _ = served
    real = core.limits
    with pytest.raises(RequestError) as local:
        real.validate([5, 5000], SamplingParams(max_tokens=2))
    core.limits = dataclasses.replace(real, vocab_size=10_000)  # let it through to the core
    try:
        r = httpx.post(
            f"{base}/v1/completions", json=completion(prompt=[5, 5000], max_tokens=2), timeout=10
        )
    finally:
        core.limits = real
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "prompt" == local.value.param
    assert error["message"] == str(local.value)  # the core's message, as the API's own
    assert app.state.admission.in_flight == 0 and core.num_running == 0


def test_disconnect_and_stop_strings_abort_in_the_core(served):
    _, core, base, _ = served
    slow = completion(max_tokens=200, stream=True, thoughts={"enabled": True, "tokens": 32})
    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream("POST", f"{base}/v1/completions", json=slow) as response,
    ):
        events = (line for line in response.iter_lines() if line.startswith("data:"))
        for _ in range(3):
            next(events)
        assert core.num_running == 1
    # 200 tokens x 34 steps would take seconds; the core reports the slot freed at once
    wait_for(lambda: core.num_running == 0, what="the core to drop the request")
    free = httpx.post(f"{base}/v1/completions", json=completion(max_tokens=12, temperature=0))
    text = free.json()["choices"][0]["text"]
    stop = text[4:6]
    r = httpx.post(
        f"{base}/v1/completions",
        json={**slow, "stream": False, "temperature": 0, "stop": [stop]},
        timeout=TIMEOUT,
    )
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == text[: text.index(stop)]
    wait_for(lambda: core.num_running == 0, what="the core to abort the stopped request")


def test_killed_core_fails_in_flight_requests_and_stops_the_server(served):
    """Kills the module's core: keep this the last test that uses `served`."""
    app, core, base, _ = served
    stopped = threading.Event()
    app.state.on_fatal = stopped.set
    results: dict[str, httpx.Response] = {}
    body = completion(max_tokens=200, thoughts={"enabled": True, "tokens": 32})

    def send(name: str, stream: bool) -> None:
        results[name] = httpx.post(
            f"{base}/v1/completions", json={**body, "stream": stream}, timeout=TIMEOUT
        )

    threads = [threading.Thread(target=send, args=(n, n == "stream")) for n in ("stream", "plain")]
    for t in threads:
        t.start()
    wait_for(lambda: core.num_running == 2, what="both requests to run")
    os.kill(core.process.pid, signal.SIGKILL)
    for t in threads:
        t.join(15)
        assert not t.is_alive(), "a request hung after the core died"
    assert stopped.wait(5)
    health = httpx.get(f"{base}/health")
    new = httpx.post(f"{base}/v1/completions", json=completion(max_tokens=2))
    assert health.status_code == 503 and health.json()["status"] == "dead"
    assert "exit code -9" in health.json()["error"]
    plain = results["plain"].json()["error"]
    assert results["plain"].status_code == 500 and plain["code"] == "engine_dead"
    assert plain["type"] == "server_error" and "died" in plain["message"]
    events = sse_events(results["stream"].text)
    assert events[-2]["error"]["code"] == "engine_dead" and events[-1] == "[DONE]"
    assert new.status_code == 503 and new.json()["error"]["code"] == "engine_dead"


def test_core_messages_round_trip():
    """What crosses the boundary decodes to equal engine dataclasses (msgspec)."""
    from server.engine import FinishReason, RequestOutput, TokenOutput
    from server.engine import core_messages as msg

    params = SamplingParams(max_tokens=3, stop=("x",), thoughts=ThoughtParams(enabled=True))
    add = msg.AddRequest("r", [1, 2], params)
    assert msg.to_core.decode(msg.encoder.encode(add)) == add
    out = RequestOutput("r", 1, [TokenOutput(5, "", -0.5, [(5, -0.5)], [[1, 2]], [0.25])], True)
    out.finish_reason = FinishReason.LENGTH
    decoded = msg.from_core.decode(msg.encoder.encode(msg.Outputs([out], 1, 0)))
    assert decoded.outputs == [out] and decoded.outputs[0].finish_reason is FinishReason.LENGTH
    assert json.loads(json.dumps(dataclasses.asdict(params)))  # the config path is JSON
    info = ModelInfo(256, 3, 5, True, (3,), "here", "float32", "asked for", "cpu")
    limits = RequestLimits(256, 300, 3, 16, 4)
    ready = msg.from_core.decode(msg.encoder.encode(msg.Ready(info, limits, b"")))
    assert ready.model_info == info and isinstance(ready.model_info, ModelInfo)
    assert ready.limits == limits


def test_core_threads_take_every_core_on_cpu_unless_told():
    from server.engine.core import core_threads

    cores = len(os.sched_getaffinity(0))
    assert core_threads(EngineConfig(device="cpu")) == cores
    assert core_threads(EngineConfig(device="cpu", num_threads=1)) == 1
    assert core_threads(EngineConfig(device="cuda")) is None  # torch's own default
