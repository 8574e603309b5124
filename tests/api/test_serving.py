"""The whole app over httpx.ASGITransport with a scripted FakeEngine: response shapes, SSE
framing, usage accounting of thought tokens, logprobs, thoughts, batched prompts, scoring."""

from __future__ import annotations

import pytest

from tests.api.api_fakes import CHAT, COMPLETION, REPLY, FakeEngine, client, make_app, sse_events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def post(app, path: str, body: dict):
    async with client(app) as c:
        return await c.post(path, json=body)


async def test_chat_response_shape_and_usage():
    app, engine = make_app()
    r = await post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 5})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["id"].startswith("chatcmpl-") and r.headers["x-request-id"] == data["id"]
    assert data["object"] == "chat.completion" and data["model"] == "fake-model"
    assert data["system_fingerprint"].startswith("fp_")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == REPLY[:5]
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None
    usage = data["usage"]
    # heads trained -> thoughts on by default, checkpoint length 3, one thought per token
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 5 * 3
    assert usage["completion_tokens"] == 5 + 15
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    request_id, prompt, params = engine.requests[0]
    rendered = engine.tokenizer("<user>Hi\n<assistant>", add_special_tokens=False)
    assert prompt == rendered["input_ids"]
    assert params.thoughts.enabled and params.thoughts.num_tokens is None


async def test_chat_stop_finish_reason_and_default_max_tokens():
    app, engine = make_app()
    r = await post(app, "/v1/chat/completions", {**CHAT, "stop": ["t"]})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "Hello " and choice["finish_reason"] == "stop"
    params = engine.requests[0][2]
    assert params.stop == ("t",)
    assert params.max_tokens == 256 - len(engine.requests[0][1])  # chat default: context left


async def test_chat_stream_framing_deltas_usage_and_done():
    app, _ = make_app()
    body = {
        **CHAT,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
        "thoughts": {"include": True, "tokens": 2, "count": 2},
    }
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    tokens = chunks[1:5]
    assert "".join(c["choices"][0]["delta"]["content"] for c in tokens) == REPLY[:4]
    for c in tokens:
        assert c["choices"][0]["delta"]["reasoning"] == "hm | hm\n"
        entry = c["choices"][0]["thoughts"][0]
        assert entry["thoughts"] == ["hm", "hm"] and entry["mixing_weights"] == [0.25, 0.25]
        assert len(entry["thought_ids"]) == 2 and len(entry["thought_ids"][0]) == 2
        assert c["usage"] is None  # include_usage: null usage on every other chunk
    assert chunks[5]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    usage_chunk = chunks[6]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"] == 4 * 2 * 2
    assert usage_chunk["usage"]["completion_tokens"] == 4 + 16


async def test_chat_stream_without_usage_has_no_usage_key():
    app, _ = make_app()
    async with client(app) as c:
        r = await c.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and all("usage" not in e for e in events[:-1])
    assert len(events) == 1 + 2 + 1 + 1  # role, 2 tokens, finish, [DONE]


async def test_chat_reasoning_and_thoughts_when_included():
    app, _ = make_app()
    body = {**CHAT, "max_tokens": 3, "include_reasoning": True}
    r = await post(app, "/v1/chat/completions", body)
    choice = r.json()["choices"][0]
    assert choice["message"]["reasoning"] == "hmm\nhmm\nhmm\n"
    assert [t["token"] for t in choice["thoughts"]] == list(REPLY[:3])
    r = await post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 3})
    choice = r.json()["choices"][0]
    assert choice["message"]["reasoning"] is None and choice["thoughts"] is None


async def test_thoughts_off_means_no_reasoning_tokens():
    app, engine = make_app()
    r = await post(
        app,
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 3, "reasoning_effort": "none", "include_reasoning": True},
    )
    data = r.json()
    assert data["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert data["choices"][0]["message"]["reasoning"] is None
    assert not engine.requests[0][2].thoughts.enabled


async def test_untrained_heads_default_thoughts_off():
    app, engine = make_app(FakeEngine(heads_trained=False))
    r = await post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 2})
    assert r.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert not engine.requests[0][2].thoughts.enabled


async def test_chat_logprobs_openai_format():
    app, _ = make_app()
    r = await post(
        app, "/v1/chat/completions", {**CHAT, "max_tokens": 2, "logprobs": True, "top_logprobs": 2}
    )
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["H", "e"]
    assert content[0]["logprob"] == -0.5 and content[0]["bytes"] == list(b"H")
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["H", "I"]
    assert content[0]["top_logprobs"][1] == {"token": "I", "logprob": -1.5, "bytes": [73]}


async def test_chat_n_choices():
    app, _ = make_app()
    r = await post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 2, "n": 3})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert {c["message"]["content"] for c in choices} == {"He"}
    assert r.json()["usage"]["completion_tokens"] == 3 * (2 + 2 * 3)


async def test_completion_batched_prompts_index_in_order():
    app, engine = make_app()
    body = {**COMPLETION, "prompt": ["a", "bb"], "n": 2, "max_tokens": 1}
    data = (await post(app, "/v1/completions", body)).json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in data["choices"]] == ["H"] * 4
    assert data["usage"]["prompt_tokens"] == 1 + 2
    encode = engine.tokenizer
    assert sorted(p for _, p, _ in engine.requests) == sorted(
        encode(t)["input_ids"] for t in ("a", "bb")
    )
    assert {rid for rid, _, _ in engine.requests} == {data["id"] + "-0", data["id"] + "-1"}


async def test_completion_token_prompts_and_echo():
    app, engine = make_app()
    ids = engine.tokenizer("abc", add_special_tokens=False)["input_ids"]
    data = (
        await post(
            app,
            "/v1/completions",
            {**COMPLETION, "prompt": [ids, ids], "echo": True, "max_tokens": 2},
        )
    ).json()
    assert [c["text"] for c in data["choices"]] == ["abcHe", "abcHe"]
    assert [p for _, p, _ in engine.requests] == [ids, ids]


async def test_completion_logprobs_legacy_format():
    app, _ = make_app()
    body = {**COMPLETION, "max_tokens": 3, "logprobs": 1}
    data = (await post(app, "/v1/completions", body)).json()
    lp = data["choices"][0]["logprobs"]
    assert lp["tokens"] == ["H", "e", "l"] and lp["token_logprobs"] == [-0.5] * 3
    assert lp["top_logprobs"] == [{"H": -0.5}, {"e": -0.5}, {"l": -0.5}]
    assert lp["text_offset"] == [0, 1, 2]


@pytest.mark.parametrize("max_tokens", [0, 1])
async def test_scoring_echo_logprobs_lm_eval_convention(max_tokens):
    app, engine = make_app()
    body = {
        **COMPLETION,
        "prompt": "abcd",
        "echo": True,
        "logprobs": 2,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "seed": 7,
        "thoughts": {"tokens": 2},
    }
    data = (await post(app, "/v1/completions", body)).json()
    choice = data["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == "abcd" + "H" * max_tokens
    assert lp["tokens"][:4] == ["a", "b", "c", "d"] and len(lp["tokens"]) == 4 + max_tokens
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:4] == [-1.0] * 3
    assert lp["top_logprobs"][1] == {"b": -1.0, "c": -2.0}
    assert lp["text_offset"] == list(range(4 + max_tokens))
    assert choice["finish_reason"] == "length"
    prompt_ids, thoughts, top, seed = engine.scored[0]
    assert thoughts.enabled and thoughts.num_tokens == 2 and top == 2 and seed == 7
    usage = data["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 4 * 2 + max_tokens * 2


async def test_completion_stream_echo_and_usage():
    app, _ = make_app()
    body = {
        **COMPLETION,
        "prompt": "ab",
        "echo": True,
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "include_reasoning": True,
    }
    async with client(app) as c:
        events = sse_events((await c.post("/v1/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert chunks[0]["choices"][0]["text"] == "ab"
    assert [c["choices"][0]["text"] for c in chunks[1:3]] == ["H", "e"]
    assert chunks[1]["choices"][0]["reasoning"] == "hmm\n"
    assert chunks[3]["choices"][0]["finish_reason"] == "length"
    assert chunks[4]["choices"] == [] and chunks[4]["usage"]["completion_tokens"] == 2 + 6


async def test_models_card():
    app, _ = make_app(served_model_name="qs", engine_config={"max_num_thoughts": 3})
    async with client(app) as c:
        data = (await c.get("/v1/models")).json()
        one = (await c.get("/v1/models/qs")).json()
    card = data["data"][0]
    assert data["object"] == "list" and card == one
    assert card["id"] == "qs" and card["object"] == "model" and card["owned_by"] == "quietstar"
    assert card["max_model_len"] == 256 and isinstance(card["created"], int)
    q = card["quietstar"]
    assert q["thought_tokens"] == 3 and q["n_ahead"] == 6 and q["heads_trained"] is True
    assert q["trained_thought_tokens"] == [3]
    assert q["thoughts_default"] is True
    assert q["max_num_thoughts"] == 3 and "max_parallel_thoughts" not in q


async def test_metrics_count_requests_tokens_and_latency():
    app, _ = make_app()
    await post(app, "/v1/chat/completions", {**CHAT, "max_tokens": 3})
    await post(app, "/v1/chat/completions", {**CHAT, "temperature": 9})
    async with client(app) as c:
        text = (await c.get("/metrics")).text
    assert 'quietstar_requests_total{endpoint="chat",outcome="success"} 1.0' in text
    assert 'quietstar_requests_total{endpoint="chat",outcome="invalid"} 1.0' in text
    assert "quietstar_visible_tokens_total 3.0" in text
    assert "quietstar_thought_tokens_total 9.0" in text
    assert "quietstar_time_to_first_token_seconds_count 1.0" in text
    assert "quietstar_inter_token_latency_seconds_count 2.0" in text
    assert "quietstar_e2e_request_latency_seconds_count 1.0" in text
    assert "quietstar_num_requests_running 0.0" in text
    assert "quietstar_num_requests_waiting 0.0" in text


async def test_health_ready_and_cors():
    app, _ = make_app(cors_origins=("http://ui.example",))
    async with client(app) as c:
        r = await c.get("/health")
        pre = await c.options(
            "/v1/chat/completions",
            headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"},
        )
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert pre.headers["access-control-allow-origin"] == "http://ui.example"
