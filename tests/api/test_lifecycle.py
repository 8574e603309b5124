"""Request and server lifecycle: a client disconnect aborts the engine request (streaming or
not), errors mid-stream end with an error event, then [DONE], the model loads in the
background behind a 503 /health, and shutdown stops the engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

import server.engine
from server.api import build_app, drain
from server.config import ServerConfig
from server.engine import EngineConfig
from tests.api.api_fakes import CHAT, COMPLETION, FakeEngine, client, make_app, sse_events


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Connection:
    """Drives the ASGI app by hand (uvicorn's spec version 2.3): sends the body, records what
    the app sends, and reports `http.disconnect` once `drop()` is called."""

    def __init__(self, app, path: str, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
            "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
        }
        self.inbox = [{"type": "http.request", "body": payload, "more_body": False}]
        self.sent: list[dict] = []
        self.gone = asyncio.Event()
        self.task = asyncio.create_task(app(self.scope, self.receive, self.send))

    async def receive(self) -> dict:
        if self.inbox:
            return self.inbox.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    def drop(self) -> None:
        self.gone.set()


async def until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_disconnect_aborts_non_streaming_request():
    engine = FakeEngine()
    engine.gate = asyncio.Event()  # the engine is busy with the request
    app, _ = make_app(engine)
    conn = Connection(app, "/v1/chat/completions", CHAT)
    await until(lambda: engine.num_running == 1)
    conn.drop()
    await asyncio.wait_for(conn.task, 5)
    request_id = engine.requests[0][0]
    assert engine.aborted == [request_id] and engine.num_running == 0
    assert app.state.admission.in_flight == 0
    async with client(app) as c:
        metrics = (await c.get("/metrics")).text
    assert 'quietstar_requests_total{endpoint="chat",outcome="aborted"} 1.0' in metrics


@pytest.mark.anyio
async def test_disconnect_aborts_stream_within_a_step():
    engine = FakeEngine(step_s=0.01)
    app, _ = make_app(engine)
    body = {**COMPLETION, "stream": True, "max_tokens": 200, "ignore_eos": True}
    conn = Connection(app, "/v1/completions", body)
    await until(lambda: conn.body().count(b"data:") >= 3)
    conn.drop()
    await asyncio.wait_for(conn.task, 5)
    assert engine.aborted == [engine.requests[0][0]] and engine.num_running == 0
    assert b"[DONE]" not in conn.body()
    assert app.state.admission.in_flight == 0


@pytest.mark.anyio
async def test_batched_prompts_all_abort_on_disconnect():
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    app, _ = make_app(engine)
    conn = Connection(app, "/v1/completions", {**COMPLETION, "prompt": ["a", "b", "c"]})
    await until(lambda: engine.num_running == 3)
    conn.drop()
    await asyncio.wait_for(conn.task, 5)
    assert sorted(engine.aborted) == sorted(rid for rid, _, _ in engine.requests)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        ("/v1/chat/completions", CHAT, lambda e: e["choices"][0]["delta"].get("content")),
        ("/v1/completions", COMPLETION, lambda e: e["choices"][0]["text"]),
    ],
    ids=["chat", "completions"],
)
async def test_mid_stream_error_event_then_done(path, body, text_of):
    """vLLM's order: the error envelope in-band (the 200 is already sent), then [DONE]."""
    engine = FakeEngine()
    engine.fail_after = 2
    app, _ = make_app(engine)
    async with client(app) as c:
        r = await c.post(path, json={**body, "stream": True})
    events = sse_events(r.text)
    assert r.status_code == 200 and events[-1] == "[DONE]" and events.count("[DONE]") == 1
    tokens = [e for e in events[:-1] if "choices" in e and text_of(e)]
    assert [text_of(e) for e in tokens] == ["H", "e"]
    error = events[-2]["error"]
    assert error["type"] == "server_error" and "engine exploded" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert all("error" not in e for e in events[:-2])
    assert app.state.admission.in_flight == 0


@pytest.mark.anyio
async def test_shutdown_mid_stream_is_an_abort_error_event_then_done():
    engine = FakeEngine()
    engine.abort_all = True
    app, _ = make_app(engine)
    async with client(app) as c:
        r = await c.post("/v1/completions", json={**COMPLETION, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "aborted"


def test_model_loads_in_background_behind_health(monkeypatch):
    release = threading.Event()

    class SlowEngine(FakeEngine):
        def __init__(self, config: EngineConfig) -> None:
            assert config.model == "slow-model"
            release.wait(10)
            super().__init__()

    monkeypatch.setattr(server.engine, "EngineCoreClient", SlowEngine)
    app = build_app(ServerConfig(engine=EngineConfig(model="slow-model")))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 503
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 503
        release.set()
        deadline = time.monotonic() + 10
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        engine = app.state.engine
        assert engine.started and not engine.stopped
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "slow-model"})
        assert r.status_code == 200
    assert engine.stopped  # lifespan shutdown stopped the engine
    assert app.state.status == "stopping"


def test_failed_load_reports_and_stops_the_server(monkeypatch):
    class BrokenEngine:
        def __init__(self, config: EngineConfig) -> None:
            raise ValueError("no such checkpoint directory")

    monkeypatch.setattr(server.engine, "EngineCoreClient", BrokenEngine)
    app = build_app(ServerConfig(engine=EngineConfig(model="missing")))
    stopped = threading.Event()
    app.state.on_fatal = stopped.set
    with TestClient(app) as c:
        assert stopped.wait(10)
        health = c.get("/health")
        chat = c.post("/v1/chat/completions", json=CHAT)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert "no such checkpoint" in health.json()["error"]
    assert chat.json()["error"]["code"] == "model_load_failed"


@pytest.mark.anyio
async def test_drain_reports_stopping_and_lets_running_requests_finish():
    """SIGTERM's drain: /health and new requests get 503 at once; a request already running
    finishes; the engine is stopped after the timeout only if something is still running."""
    engine = FakeEngine(step_s=0.01)
    app, _ = make_app(engine)
    conn = Connection(app, "/v1/completions", {**COMPLETION, "stream": True, "max_tokens": 10})
    await until(lambda: conn.body().count(b"data:") >= 2)
    draining = asyncio.create_task(drain(app, 0.5))
    await asyncio.sleep(0)
    async with client(app) as c:
        health = await c.get("/health")
        refused = await c.post("/v1/completions", json=COMPLETION)
    assert health.status_code == 503 and health.json()["status"] == "stopping"
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
    await asyncio.wait_for(conn.task, 5)
    assert conn.body().endswith(b"data: [DONE]\n\n")
    await draining
    assert not engine.stopped  # nothing was left to abort


@pytest.mark.parametrize("engine_core", ["process", "thread"])
def test_engine_core_flag_picks_the_engine(monkeypatch, engine_core):
    """`--engine-core process` loads an EngineCoreClient, `thread` an AsyncEngine."""
    loaded = []

    class Recording(FakeEngine):
        def __init__(self, config: EngineConfig, kind: str) -> None:
            loaded.append(kind)
            super().__init__()

    monkeypatch.setattr(server.engine, "EngineCoreClient", lambda c: Recording(c, "process"))
    monkeypatch.setattr(server.engine, "AsyncEngine", lambda c: Recording(c, "thread"))
    config = ServerConfig(engine=EngineConfig(model="m"), engine_core=engine_core)
    with TestClient(build_app(config)) as c:
        deadline = time.monotonic() + 10
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    assert loaded == [engine_core]
