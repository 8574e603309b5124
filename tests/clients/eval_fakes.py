"""Test helpers: a scripted fake OpenAI-compatible endpoint (for httpx.MockTransport or a local
uvicorn server) and tiny made-up GSM8K / CommonsenseQA records."""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

GSM8K_ROWS = [
    {
        "question": "Tom has 10 apples and buys 8 more. How many apples?",
        "answer": "10+8=18\n#### 18",
    },
    {"question": "A box holds 3 pens. How many pens in 2 boxes and 1 more?", "answer": "#### 7"},
    {"question": "What is 1,000 minus 1,500?", "answer": "1000-1500=-500\n#### -500"},
]
CSQA_ROWS = [
    {
        "answerKey": "B",
        "id": "q-river",
        "question": {
            "question_concept": "money",
            "stem": "Where would you keep money safe?",
            "choices": [
                {"label": "A", "text": "river"},
                {"label": "B", "text": "bank"},
                {"label": "C", "text": "shoe"},
                {"label": "D", "text": "cloud"},
                {"label": "E", "text": "sand"},
            ],
        },
    },
    {
        "answerKey": "E",
        "id": "q-sky",
        "question": {
            "question_concept": "sky",
            "stem": "What colour is a clear sky?",
            "choices": [
                {"label": label, "text": text}
                for label, text in zip(
                    "ABCDE", ["red", "green", "black", "white", "blue"], strict=True
                )
            ],
        },
    },
]
TOKEN_RE = re.compile(r"[A-Za-z]+|\d|\s|.")


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


class FakeEndpoint:
    """Answers /models, /completions (generation and echo+logprobs) and /chat/completions.

    `reply(prompt_or_last_message, body)` scripts generated text; echo scoring tokenises the
    prompt into words / single digits / single characters, each with logprob ln 0.5 and
    alternatives {"7": ln 0.2, "E": ln 0.1} (ln 0.9 for words in `boost`).
    `failures` is a queue of statuses (or exceptions) served before real answers.
    """

    def __init__(
        self, reply: Callable[[str, dict[str, Any]], str], models: tuple[str, ...] = ("fake-model",)
    ):
        self.reply = reply
        self.models = models
        self.boost: set[str] = set()
        self.failures: list[int | Exception] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.logprobs = True

    def __call__(self, path: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        if path.endswith("/models"):
            return 200, {
                "object": "list",
                "data": [{"id": m, "object": "model"} for m in self.models],
            }
        assert body is not None
        self.requests.append((path, body))
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure, {"error": {"message": "try later", "type": "busy", "code": failure}}
        if body.get("model") not in self.models:
            return 404, {"error": {"message": f"model {body.get('model')} not found"}}
        include = bool((body.get("thoughts") or {}).get("include"))
        usage = {"prompt_tokens": 10, "completion_tokens": 3}
        if include:
            usage["completion_tokens_details"] = {"reasoning_tokens": 24}
        if path.endswith("/chat/completions"):
            text = self.reply(body["messages"][-1]["content"], body)
            message = {"role": "assistant", "content": text}
            if include:
                message["reasoning"] = "<thought about it>"
            return 200, {
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message}],
                "usage": usage,
            }
        if body.get("echo"):
            choice = {
                "index": 0,
                "text": body["prompt"],
                "logprobs": self.echo_logprobs(body["prompt"]),
            }
        else:
            choice = {"index": 0, "text": self.reply(body["prompt"], body), "logprobs": None}
        if include:
            choice["reasoning"] = "<thought about it>"
        return 200, {"object": "text_completion", "choices": [choice], "usage": usage}

    def echo_logprobs(self, prompt: str) -> dict[str, Any] | None:
        if not self.logprobs:
            return None
        tokens = TOKEN_RE.findall(prompt)
        offsets = [0]
        for token in tokens[:-1]:
            offsets.append(offsets[-1] + len(token))
        lps = [math.log(0.9 if t in self.boost else 0.5) for t in tokens]
        tops = [
            {"7": math.log(0.2), "E": math.log(0.1)} | {t: lp}
            for t, lp in zip(tokens, lps, strict=True)
        ]
        lps[0], tops[0] = None, None  # the first echoed token has no logprob (anchors §1.4)
        return {
            "tokens": tokens,
            "token_logprobs": lps,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else None
            status, data = self(request.url.path, body)
            return httpx.Response(status, json=data)

        return httpx.MockTransport(handle)

    def completions(self) -> list[dict[str, Any]]:
        return [body for _, body in self.requests]


def gsm8k_reply(prompt: str, body: dict[str, Any]) -> str:
    """Right for apples (18) and pens (7), wrong for the subtraction (answers 500)."""
    if "apples" in prompt:
        return " 18"
    if "pens" in prompt:
        return " The answer is 7."
    return " 500"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(fake: FakeEndpoint) -> Iterator[str]:
    """The fake behind a real uvicorn server on 127.0.0.1; yields its /v1 base URL."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse(fake("/v1/models", None)[1])

    @app.post("/v1/{route:path}")
    async def post(route: str, request: Request) -> JSONResponse:
        status, data = fake(f"/v1/{route}", await request.json())
        return JSONResponse(data, status_code=status)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=5)
