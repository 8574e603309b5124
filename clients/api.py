"""Async HTTP client for an OpenAI-compatible endpoint: bounded concurrency, retries, clear errors.

Retries with exponential backoff (honouring Retry-After) on 429, 5xx, timeouts and dropped
connections; a refused connection at start-up, a wrong model or a rejected request raise
`EvalError` with one line saying what to fix.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import httpx

from clients.common import Output
from clients.config import EvalError

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_BACKOFF_S = 30.0


class ApiClient:
    """One `httpx.AsyncClient` per run; use as `async with ApiClient(...) as client`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 600.0,
        concurrency: int = 4,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency * 2),
            transport=transport,
        )
        self._slots = asyncio.Semaphore(concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def list_models(self) -> dict[str, Any] | None:
        """GET /models; None when the endpoint has no such route (404)."""
        try:
            response = await self._http.get("/models")
        except httpx.ConnectError as exc:
            raise EvalError(
                f"cannot connect to {self.base_url} ({exc or 'connection refused'}); "
                "is the server running? (start one with `quietstar serve`)"
            ) from exc
        except httpx.HTTPError as exc:
            raise EvalError(f"GET {self.base_url}/models failed: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        self._raise_for_status(response, "GET /models")
        return self._json(response, "GET /models")

    async def complete(self, endpoint: str, body: dict[str, Any]) -> Output:
        """POST a completions or chat request and parse its first choice."""
        data = await self._post(endpoint, body)
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise EvalError(f"{endpoint} returned no choices: {str(data)[:200]}") from exc
        message = choice.get("message")
        if isinstance(message, dict):  # chat: choices[0].message.{content, reasoning}
            text, source = message.get("content") or "", message
        else:  # completions: choices[0].{text, reasoning}
            text, source = choice.get("text") or "", choice
        reasoning = source.get("reasoning") or source.get("reasoning_content")
        return Output(text, reasoning, choice.get("logprobs"), usage_counts(data.get("usage")))

    async def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                async with self._slots:
                    response = await self._http.post(endpoint, json=body)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if last:
                    raise EvalError(
                        f"POST {self.base_url}{endpoint} failed {attempt + 1} times; "
                        f"last error {type(exc).__name__}: {exc}"
                    ) from exc
                await self._sleep(attempt, None, type(exc).__name__)
                continue
            if response.status_code in RETRY_STATUS and not last:
                retry_after = response.headers.get("retry-after")
                await self._sleep(attempt, retry_after, f"HTTP {response.status_code}")
                continue
            self._raise_for_status(response, f"POST {endpoint}", body.get("model"))
            return self._json(response, f"POST {endpoint}")
        raise AssertionError("unreachable")

    def _json(self, response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError as exc:
            raise EvalError(
                f"{what} at {self.base_url} did not answer JSON; is --base-url the API root "
                "(ending in /v1)?"
            ) from exc
        if not isinstance(data, dict):
            raise EvalError(f"{what} answered {type(data).__name__}, not a JSON object")
        return data

    async def _sleep(self, attempt: int, retry_after: str | None, reason: str) -> None:
        delay = self.backoff_s * 2**attempt * (1 + random.random() / 4)
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass
        delay = min(delay, MAX_BACKOFF_S)
        logger.warning("%s; retry %d/%d in %.1fs", reason, attempt + 1, self.max_retries, delay)
        await asyncio.sleep(delay)

    def _raise_for_status(
        self, response: httpx.Response, what: str, model: str | None = None
    ) -> None:
        if response.status_code < 400:
            return
        detail = error_message(response)
        if response.status_code in (401, 403):
            hint = "check --api-key / $QUIETSTAR_API_KEY"
        elif response.status_code in RETRY_STATUS:
            hint = f"still failing after {self.max_retries} retries"
        elif response.status_code == 404 and model is not None:
            hint = f"unknown model {model!r} or route; see GET {self.base_url}/models"
        else:
            hint = "the endpoint rejected the request"
        raise EvalError(f"{what} -> HTTP {response.status_code}: {detail} ({hint})")


def error_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style, flat or FastAPI error body, else the raw text."""
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:200]
    return str(data)[:200]


def usage_counts(usage: dict[str, Any] | None) -> dict[str, int]:
    """prompt/completion/reasoning token counts; reasoning read from completion_tokens_details
    (OpenAI) or a top-level `reasoning_tokens` (SGLang style)."""
    usage = usage or {}
    details = usage.get("completion_tokens_details") or {}
    counts = {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": details.get("reasoning_tokens", usage.get("reasoning_tokens")),
    }
    return {key: int(value) for key, value in counts.items() if isinstance(value, int | float)}
