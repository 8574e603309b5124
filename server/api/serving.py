"""Protocol <-> engine: request preparation (model check, sampling params, engine validation,
admission) into a `Job`, and the two drivers: collect-then-respond (aborting when the client
disconnects) and server-sent events, which always end with `data: [DONE]`: after a failure
mid-stream, an error event comes first (vLLM's serving_chat / serving_completion do the same: the
status line is already sent, so the error travels in-band, and clients waiting for [DONE] stop)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from server.api import formatting
from server.api.errors import APIError, bad_request
from server.api.job import Aborted, ChoiceState, Job
from server.api.metrics import ServerMetrics
from server.api.middleware import Admission
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.responses import Model, QuietStarInfo
from server.config import RequestDefaults
from server.engine import EngineDeadError, RequestOutput

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected before the response was ready."""


class Builder(Protocol):
    """Endpoint-specific response shapes (chat or completions) for one job."""

    async def prepare(self) -> None: ...
    def start(self) -> list[BaseModel]: ...
    def on_output(self, choice: ChoiceState, out: RequestOutput) -> list[BaseModel]: ...
    def end(self) -> list[BaseModel]: ...
    def response(self) -> BaseModel: ...


class Serving:
    """The loaded engine with its request defaults; lives on app.state.serving."""

    def __init__(
        self, engine: Any, defaults: RequestDefaults, metrics: ServerMetrics, admission: Admission
    ) -> None:
        self.engine, self.defaults = engine, defaults
        self.metrics, self.admission = metrics, admission
        self.text = formatting.TokenText(engine.tokenizer)
        self.created = int(time.time())
        info = json.dumps(dataclasses.asdict(engine.model_info), sort_keys=True)
        self.fingerprint = "fp_" + hashlib.sha1(info.encode()).hexdigest()[:10]

    def model_card(self) -> Model:
        info, d = self.engine.model_info, self.defaults
        quietstar = QuietStarInfo(
            thought_tokens=info.thought_tokens,
            n_ahead=info.n_ahead,
            heads_trained=info.heads_trained,
            trained_thought_tokens=list(info.trained_thought_tokens),
            thoughts_default=d.thoughts_enabled,
            max_thought_tokens=d.max_thought_tokens,
            max_num_thoughts=d.max_num_thoughts,
            reasoning_effort_tokens=dict(d.effort_tokens),
            source=info.source,
            dtype=info.dtype,
            dtype_reason=info.dtype_reason,
            device=info.device,
        )
        return Model(
            id=d.model_name,
            created=self.created,
            max_model_len=d.max_model_len,
            quietstar=quietstar,
        )

    def check_model(self, name: str) -> None:
        if name != self.defaults.model_name:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves "
                f"{self.defaults.model_name!r}",
                "model",
                "model_not_found",
            )

    def prepare(
        self,
        body: ChatCompletionRequest | CompletionRequest,
        prefix: str,
        prompts: list[list[int]],
        default_max_tokens: int,
    ) -> Job:
        """Sampling params, engine validation and admission; raises APIError (400/429)."""
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        if body.ignored_fields():
            log.info("%s: ignoring unknown fields %s", request_id, body.ignored_fields())
        try:
            params = body.to_sampling_params(
                self.defaults, max(map(len, prompts)), default_max_tokens
            )
            for prompt in prompts:
                self.engine.validate(prompt, params)
        except ValueError as e:
            raise bad_request(str(e), self._param_of(getattr(e, "param", None), body)) from e
        self.admission.acquire()
        endpoint = "chat" if isinstance(body, ChatCompletionRequest) else "completions"
        th = params.thoughts
        thoughts = (
            f"on (L={th.num_tokens or 'default'}, K={th.num_thoughts})" if th.enabled else "off"
        )
        log.info(
            "%s: %s, %d prompt(s), %d prompt tokens, n=%d, max_tokens=%d, thoughts %s%s",
            request_id,
            endpoint,
            len(prompts),
            sum(map(len, prompts)),
            params.n,
            params.max_tokens,
            thoughts,
            ", stream" if body.stream else "",
        )
        return Job(request_id, endpoint, prompts, params, self.engine, self.metrics, self.admission)

    @staticmethod
    def _param_of(param: str | None, body: Any) -> str | None:
        """The request field behind an engine RequestError's `param`."""
        if param == "max_tokens":
            if getattr(body, "max_completion_tokens", None) is not None and body.max_tokens is None:
                return "max_completion_tokens"
            return "max_tokens"
        if param in (None, "prompt"):
            return "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
        return param

    async def respond(self, job: Job, builder: Builder, request: Request) -> Response:
        """Collect every choice, then answer once; a client disconnect aborts the job."""

        async def collect() -> None:
            await builder.prepare()
            async with contextlib.aclosing(job.outputs()) as outputs:
                async for i, out in outputs:
                    job.record(i, out)

        try:
            await until_disconnected(request, collect())
        except ClientGone:
            log.info("%s: client disconnected; aborted", job.request_id)
            job.finish("aborted")
            return Response(status_code=499)
        except Aborted as e:
            job.finish("aborted")
            raise APIError(503, str(e), code="aborted") from e
        except APIError as e:
            job.finish("invalid" if e.status < 500 else "error")
            raise
        except ValueError as e:  # the engine refused the request
            job.finish("invalid")
            raise bad_request(str(e), getattr(e, "param", None)) from e
        except EngineDeadError as e:
            job.finish("error")
            raise _stream_error(e) from e
        except Exception as e:
            job.finish("error")
            log.exception("%s: failed", job.request_id)
            raise APIError(500, f"internal server error ({type(e).__name__}: {e})") from e
        except BaseException:
            job.finish("error")
            raise
        job.finish("success")
        body = builder.response().model_dump_json()
        return Response(
            body, media_type="application/json", headers={"X-Request-Id": job.request_id}
        )

    def stream(self, job: Job, builder: Builder) -> StreamingResponse:
        """Server-sent events ending in [DONE]; after an error, an error event, then [DONE]. A
        client that went away gets nothing more (the generator is closed, not resumed)."""

        async def events() -> AsyncIterator[str]:
            try:
                await builder.prepare()
                for chunk in builder.start():
                    yield formatting.sse(chunk)
                async with contextlib.aclosing(job.outputs()) as outputs:
                    async for i, out in outputs:
                        for chunk in builder.on_output(job.record(i, out), out):
                            yield formatting.sse(chunk)
                for chunk in builder.end():
                    yield formatting.sse(chunk)
                job.finish("success")
                yield formatting.DONE
            except Exception as e:  # noqa: BLE001 - reported in-band: the status line is sent
                error = _stream_error(e)
                job.finish(
                    "aborted"
                    if isinstance(e, Aborted)
                    else "invalid"
                    if error.status < 500
                    else "error"
                )
                log.log(
                    logging.ERROR if error.status >= 500 else logging.INFO,
                    "%s: stream failed: %s",
                    job.request_id,
                    e,
                    exc_info=error.status == 500,
                )
                yield formatting.sse_error(error.body())
                yield formatting.DONE
            finally:  # cancelled: the client went away (no-op when already finished)
                if job.outcome is None:
                    log.info("%s: client disconnected; aborted", job.request_id)
                    job.finish("aborted")

        body = events()

        async def close() -> None:  # after the response, also when the client went away
            await body.aclose()
            job.finish("aborted")  # no-op unless the stream never started

        return StreamingResponse(
            body,
            media_type="text/event-stream",
            headers={**SSE_HEADERS, "X-Request-Id": job.request_id},
            background=BackgroundTask(close),
        )


def _stream_error(e: Exception) -> APIError:
    if isinstance(e, APIError):
        return e
    if isinstance(e, Aborted):
        return APIError(503, str(e), code="aborted")
    if isinstance(e, ValueError):
        return bad_request(str(e), getattr(e, "param", None))
    if isinstance(e, EngineDeadError):
        return APIError(500, f"{e}; the server is stopping", code="engine_dead")
    return APIError(500, f"internal server error ({type(e).__name__}: {e})")


async def until_disconnected(request: Request, work: Awaitable[None]) -> None:
    """Run `work`; cancel it and raise ClientGone when the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled from outside (shutdown)
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone()


async def _wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
