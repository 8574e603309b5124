"""Test helpers for the API layer: a scripted FakeEngine with the AsyncEngine surface (thoughts,
logprobs, stop strings, scoring, blocking, failures, abort records), app/client builders and an
SSE parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from server.api import build_app
from server.config import ServerConfig
from server.engine import (
    EngineConfig,
    FinishReason,
    ModelInfo,
    RequestError,
    RequestOutput,
    SamplingParams,
    ScoreOutput,
    ThoughtParams,
    TokenOutput,
)
from tests.support import byte_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
REPLY = "Hello there, I am a fake engine reply."
THOUGHT = "hmm"


def chat_tokenizer() -> Any:
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


_TOKENIZER = chat_tokenizer()


class FakeEngine:
    """Emits REPLY token by token (one RequestOutput per token and choice). With thoughts on,
    each visible token gets K thoughts of L tokens spelling THOUGHT; `gate` holds every request
    until set; `fail_after` raises after that many tokens; `abort_all` ends choices as aborted."""

    def __init__(
        self,
        *,
        heads_trained: bool = True,
        max_model_len: int = 256,
        thought_tokens: int = 3,
        max_thought_tokens: int = 16,
        max_num_thoughts: int = 4,
        step_s: float = 0.0,
    ) -> None:
        self.tokenizer = _TOKENIZER
        self.model_info = ModelInfo(
            max_model_len=max_model_len,
            thought_tokens=thought_tokens,
            n_ahead=thought_tokens + 3,
            heads_trained=heads_trained,
            trained_thought_tokens=(thought_tokens,) if heads_trained else (),
            source="fake",
            dtype="float32",
            dtype_reason="",
            device="cpu",
        )
        self.max_thought_tokens = max_thought_tokens
        self.max_num_thoughts = max_num_thoughts
        self.step_s = step_s
        self.gate: asyncio.Event | None = None
        self.fail_after: int | None = None
        self.abort_all = False
        self.requests: list[tuple[str, list[int], SamplingParams]] = []
        self.scored: list[tuple[list[int], ThoughtParams, int, int | None]] = []
        self.aborted: list[str] = []
        self.num_running = self.num_waiting = 0
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def shutdown(self) -> None:
        self.stopped = True

    def abort(self, request_id: str) -> None:
        if request_id not in self.aborted:
            self.aborted.append(request_id)

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        if not prompt_ids:
            raise RequestError("the prompt is empty", "prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= len(self.tokenizer):
            raise RequestError(f"prompt token ids must be in [0, {len(self.tokenizer)})", "prompt")
        th = params.thoughts
        if th.enabled and (th.num_tokens or 0) > self.max_thought_tokens:
            raise RequestError(
                f"thought tokens {th.num_tokens} exceed this server's maximum", "thoughts.tokens"
            )
        limit = self.model_info.max_model_len
        if len(prompt_ids) >= limit:
            raise RequestError(
                f"this model's maximum context length is {limit} tokens; the "
                f"prompt has {len(prompt_ids)}",
                "prompt",
            )
        if len(prompt_ids) + params.max_tokens > limit:
            raise RequestError(
                f"this model's maximum context length is {limit} tokens; the "
                f"request has {len(prompt_ids)} prompt tokens and asks for "
                f"{params.max_tokens} completion tokens",
                "max_tokens",
            )

    def thought_length(self, thoughts: ThoughtParams) -> int:
        trained = self.model_info.thought_tokens
        return trained if thoughts.num_tokens is None else thoughts.num_tokens

    def _token(self, token_id: int, params: SamplingParams) -> TokenOutput:
        th, logprob, top = params.thoughts, None, None
        if params.logprobs is not None:
            logprob = -0.5
            top = [(token_id, -0.5), (token_id + 1, -1.5), (3, -2.5)][: params.logprobs]
        thought_ids = weights = None
        if th.enabled and th.include:
            ids = self.tokenizer(THOUGHT * 8, add_special_tokens=False)["input_ids"]
            thought_ids = [ids[: self.thought_length(th)] for _ in range(th.num_thoughts)]
            weights = [0.25] * th.num_thoughts
        return TokenOutput(
            token_id, self.tokenizer.decode([token_id]), logprob, top, thought_ids, weights
        )

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams):
        self.validate(prompt_ids, params)
        self.requests.append((request_id, list(prompt_ids), params))
        reply = self.tokenizer(REPLY, add_special_tokens=False)["input_ids"]
        th = params.thoughts
        per_token = th.num_thoughts * self.thought_length(th) if th.enabled else 0
        finished = [params.max_tokens == 0] * params.n
        texts = [""] * params.n
        self.num_running += 1
        try:
            if self.gate is not None:
                await self.gate.wait()
            for i in range(params.n):
                if finished[i]:
                    yield RequestOutput(
                        request_id, i, [], True, FinishReason.LENGTH, len(prompt_ids)
                    )
            step = 0
            while not all(finished):
                if self.fail_after is not None and step >= self.fail_after:
                    raise RuntimeError("engine exploded")
                await asyncio.sleep(self.step_s)
                for i in range(params.n):
                    if finished[i]:
                        continue
                    token = self._token(reply[step % len(reply)], params)
                    texts[i] += token.text
                    reason = None
                    hit = [s for s in params.stop if s in texts[i]]
                    if self.abort_all:
                        reason = FinishReason.ABORT
                    elif hit:
                        overshoot = len(texts[i]) - texts[i].index(hit[0])
                        token.text = token.text[: len(token.text) - overshoot]
                        reason = FinishReason.STOP
                    elif step + 1 >= params.max_tokens:
                        reason = FinishReason.LENGTH
                    elif step + 1 >= len(reply) and not params.ignore_eos:
                        reason = FinishReason.STOP
                    finished[i] = reason is not None
                    yield RequestOutput(
                        request_id,
                        i,
                        [token],
                        finished[i],
                        reason,
                        len(prompt_ids),
                        step + 1,
                        (step + 1) * per_token,
                    )
                step += 1
        finally:
            self.num_running -= 1
            if not all(finished):
                self.abort(request_id)

    async def score(
        self,
        prompt_ids: list[int],
        thoughts: ThoughtParams,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> ScoreOutput:
        self.scored.append((list(prompt_ids), thoughts, top_logprobs, seed))
        tops = [None] + [
            [(t, -1.0), (t + 1, -2.0), (4, -3.0)][:top_logprobs] or None for t in prompt_ids[1:]
        ]
        num_thought = len(prompt_ids) * thoughts.num_thoughts * self.thought_length(thoughts)
        return ScoreOutput(
            list(prompt_ids),
            [None] + [-1.0] * (len(prompt_ids) - 1),
            tops,
            num_thought if thoughts.enabled else 0,
        )


def make_app(engine: FakeEngine | None = None, engine_config: dict | None = None, **config: Any):
    """(app, engine) with a FakeEngine attached; `config` holds ServerConfig fields,
    `engine_config` EngineConfig fields."""
    engine = engine or FakeEngine()
    engine_config = EngineConfig(model="fake-model", **(engine_config or {}))
    app = build_app(ServerConfig(engine=engine_config, **config), engine)
    return app, engine


def client(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", **kwargs
    )


@contextlib.contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on a free local port in a thread; yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as a string); asserts
    the framing (every event is one `data:` line followed by a blank line)."""
    assert text.endswith("\n\n"), text[-50:]
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]}
COMPLETION = {"model": "fake-model", "prompt": "Once upon"}
