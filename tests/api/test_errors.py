"""Every error in the OpenAI envelope {"error": {message, type, param, code}} with a string or
null `code`: 400 (JSON, types, ranges, unsupported fields, context), 401, 404, 405, 413, 429,
500 and 503 while loading."""

from __future__ import annotations

import asyncio

import pytest

from server.api import build_app
from server.config import ServerConfig
from server.engine import EngineConfig
from tests.api.api_fakes import CHAT, COMPLETION, FakeEngine, client, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def envelope(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] is None or isinstance(error["code"], str)
    return error


async def test_malformed_json_and_non_object_bodies():
    app, _ = make_app()
    async with client(app) as c:
        bad = await c.post(
            "/v1/chat/completions",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
        array = await c.post("/v1/completions", json=[1, 2])
        text = await c.post(
            "/v1/completions", content=b"hello", headers={"content-type": "text/plain"}
        )
    error = envelope(bad, 400)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert "JSON object" in envelope(array, 400)["message"]
    envelope(text, 400)


async def test_json_without_content_type_is_accepted():
    app, _ = make_app()
    async with client(app) as c:
        r = await c.post(
            "/v1/completions",
            content=b'{"model": "fake-model", "prompt": "x", "max_tokens": 1}',
            headers={"content-type": ""},
        )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "n": 1000}, "n"),
        ({**CHAT, "thoughts": {"tokens": 1000}}, "thoughts.tokens"),
        ({**CHAT, "thoughts": {"count": 99}}, "thoughts.count"),
        ({**CHAT, "thoughts": {"content": "shuffled"}}, "thoughts.content"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools"),
        ({**CHAT, "response_format": {"type": "json_schema"}}, "response_format"),
        ({"messages": CHAT["messages"]}, "model"),
        ({**COMPLETION, "prompt": [10**9]}, "prompt"),
        ({**COMPLETION, "suffix": "x"}, "suffix"),
    ],
)
async def test_bad_fields_are_400_naming_the_param(body, param):
    app, engine = make_app()
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with client(app) as c:
        error = envelope(await c.post(path, json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert engine.requests == []


async def test_context_overflow_names_both_lengths():
    app, _ = make_app(FakeEngine(max_model_len=64))
    async with client(app) as c:
        too_long = await c.post("/v1/completions", json={**COMPLETION, "prompt": "x" * 100})
        too_many = await c.post("/v1/completions", json={**COMPLETION, "max_tokens": 1000})
    error = envelope(too_long, 400)
    assert "64" in error["message"] and "100" in error["message"]
    assert error["param"] == "prompt"
    error = envelope(too_many, 400)
    assert "1000" in error["message"] and error["param"] == "max_tokens"


async def test_unknown_model_route_and_method():
    app, _ = make_app()
    async with client(app) as c:
        model = await c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"})
        retrieve = await c.get("/v1/models/gpt-4")
        route = await c.post("/v1/embeddings", json={})
        method = await c.get("/v1/chat/completions")
    error = envelope(model, 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert envelope(retrieve, 404)["code"] == "model_not_found"
    assert "/v1/embeddings" in envelope(route, 404)["message"]
    envelope(method, 405)


async def test_api_key_required_on_v1_only():
    app, _ = make_app(api_key="sekret")
    async with client(app) as c:
        missing = await c.post("/v1/chat/completions", json=CHAT)
        wrong = await c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        ok = await c.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        health = await c.get("/health")
        metrics = await c.get("/metrics")
    error = envelope(missing, 401)
    assert error["code"] == "invalid_api_key" and missing.headers["www-authenticate"] == "Bearer"
    assert "incorrect" in envelope(wrong, 401)["message"]
    assert ok.status_code == health.status_code == metrics.status_code == 200


async def test_body_too_large_with_and_without_content_length():
    app, engine = make_app(max_body_bytes=200)
    big = {**COMPLETION, "prompt": "x" * 500}

    async def chunked():
        yield b'{"model": "fake-model", "prompt": "'
        for _ in range(10):
            yield b"x" * 50
        yield b'"}'

    async with client(app) as c:
        declared = await c.post("/v1/completions", json=big)
        streamed = await c.post(
            "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        small = await c.post("/v1/completions", json={**COMPLETION, "max_tokens": 1})
    assert envelope(declared, 413)["code"] == "request_too_large"
    assert "chunked" in streamed.request.headers.get("transfer-encoding", "")
    assert envelope(streamed, 413)["code"] == "request_too_large"
    assert small.status_code == 200 and len(engine.requests) == 1


async def test_queue_full_is_429_and_frees_up():
    engine = FakeEngine()
    engine.gate = asyncio.Event()
    app, _ = make_app(engine, {"max_num_seqs": 1}, queue_size=1)
    async with client(app) as c:
        first = [asyncio.create_task(c.post("/v1/completions", json=COMPLETION)) for _ in range(2)]
        while engine.num_running < 2:
            await asyncio.sleep(0.01)
        rejected = await c.post("/v1/completions", json=COMPLETION)
        engine.gate.set()
        done = await asyncio.gather(*first)
        after = await c.post("/v1/completions", json=COMPLETION)
        metrics = (await c.get("/metrics")).text
    error = envelope(rejected, 429)
    assert error["code"] == "queue_full" and rejected.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200
    assert 'quietstar_requests_total{endpoint="completions",outcome="rejected"} 1.0' in metrics


async def test_engine_failure_is_500_for_that_request_only():
    engine = FakeEngine()
    engine.fail_after = 1
    app, _ = make_app(engine)
    async with client(app) as c:
        failed = await c.post("/v1/completions", json=COMPLETION)
        engine.fail_after = None
        ok = await c.post("/v1/completions", json=COMPLETION)
    assert envelope(failed, 500)["type"] == "server_error"
    assert ok.status_code == 200


async def test_shutdown_abort_is_503():
    engine = FakeEngine()
    engine.abort_all = True
    app, _ = make_app(engine)
    async with client(app) as c:
        error = envelope(await c.post("/v1/completions", json=COMPLETION), 503)
    assert error["code"] == "aborted"


async def test_loading_model_answers_503():
    app = build_app(ServerConfig(engine=EngineConfig(model="fake-model")))  # lifespan not run
    async with client(app) as c:
        health = await c.get("/health")
        chat = await c.post("/v1/chat/completions", json=CHAT)
        models = await c.get("/v1/models")
    assert health.status_code == 503 and health.json() == {"status": "loading"}
    assert envelope(chat, 503)["code"] == "model_loading"
    assert envelope(models, 503)["code"] == "model_loading"
