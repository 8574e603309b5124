"""ReplicaEngineClient: the ingress's handle on the engine replicas, with the AsyncEngine surface
(generate, abort, score, validate, start, shutdown) that `server.api` serves from.

Ray picks the replica for each call (power of two choices). A replica that dies (its actor, or
the engine core inside it) before it sent anything is retried on another (Ray does not retry
streaming calls); one that dies mid-stream ends the stream with ReplicaDiedError, which the API
reports as a 500 error (an SSE error event on streams). Closing a `generate` iterator cancels
the Ray call, which cancels the replica's generator, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from server.engine import (
    EngineDeadError,
    RequestOutput,
    SamplingParams,
    ScoreOutput,
    ThoughtParams,
)
from server.engine.limits import ModelInfo, RequestLimits

log = logging.getLogger(__name__)
RETRIES = 2  # calls that fail before their first output go to another replica this often
RETRY_DELAY_S = 0.5  # time for the router to drop the dead replica


class ReplicaDiedError(RuntimeError):
    """The engine replica serving a request died after it had sent part of the answer."""


@dataclass(frozen=True)
class ReplicaInfo:
    """What the ingress learns from one replica at start: all replicas load the same model."""

    model_info: ModelInfo
    limits: RequestLimits
    tokenizer: Any


class ReplicaEngineClient:
    def __init__(self, handle: DeploymentHandle, info: ReplicaInfo, app_name: str, target: int):
        self._handle, self._app_name, self._target = handle, app_name, target
        self.model_info, self.limits, self.tokenizer = info.model_info, info.limits, info.tokenizer
        self._calls: dict[str, DeploymentResponseGenerator] = {}

    @classmethod
    async def connect(
        cls, handle: DeploymentHandle, app_name: str, target: int
    ) -> ReplicaEngineClient:
        return cls(handle, await handle.info.remote(), app_name, target)

    @property
    def num_running(self) -> int:
        """Engine requests this ingress has open on the replicas (running or queued there)."""
        return len(self._calls)

    num_waiting = 0  # per-replica queues are in Ray Serve's own metrics

    def validate(self, prompt_ids: list[int], params: SamplingParams) -> None:
        self.limits.validate(prompt_ids, params)

    def start(self) -> None:
        """Nothing to start: Ray Serve runs the replicas."""

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel what is still open (Ray Serve drains the replicas themselves)."""
        for call in list(self._calls.values()):
            call.cancel()

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        self.validate(prompt_ids, params)
        for attempt in range(RETRIES + 1):
            call = self._handle.options(stream=True).generate.remote(request_id, prompt_ids, params)
            self._calls[request_id] = call
            is_started = False
            try:
                async for out in call:
                    is_started = True
                    yield out
                return
            except (RayActorError, EngineDeadError) as e:  # the actor, or its engine core, died
                if is_started:
                    raise ReplicaDiedError(
                        f"the engine replica serving this request died mid-answer ({e.__class__.__name__}); "
                        "the other replicas still serve, retry the request"
                    ) from e
                if attempt == RETRIES:
                    raise ReplicaDiedError(f"no engine replica could take the request: {e}") from e
                log.warning("%s: engine replica died before answering; retrying", request_id)
                await asyncio.sleep(RETRY_DELAY_S)
            finally:
                if self._calls.get(request_id) is call:
                    del self._calls[request_id]
                    call.cancel()  # a no-op once the stream ended

    def abort(self, request_id: str) -> None:
        call = self._calls.pop(request_id, None)
        if call is not None:
            call.cancel()

    async def score(
        self,
        prompt_ids: list[int],
        thoughts: ThoughtParams,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> ScoreOutput:
        for attempt in range(RETRIES + 1):
            try:
                return await self._handle.score.remote(prompt_ids, thoughts, top_logprobs, seed)
            except RayActorError as e:  # scoring sends nothing before it ends: always retried
                if attempt == RETRIES:
                    raise ReplicaDiedError(f"no engine replica could score the prompt: {e}") from e
                await asyncio.sleep(RETRY_DELAY_S)
        raise AssertionError("unreachable")

    async def replica_health(self) -> tuple[dict[str, Any], int]:
        """/health's body and status: ok, degraded (fewer running than wanted) or unavailable."""
        status = await asyncio.to_thread(serve.status)
        deployment = status.applications[self._app_name].deployments[self._handle.deployment_name]
        states = {
            str(getattr(k, "value", k)).lower(): n for k, n in deployment.replica_states.items()
        }
        running = states.get("running", 0)
        if running == 0:
            word, code = "unavailable", 503
        else:
            word, code = ("ok", 200) if running >= self._target else ("degraded", 200)
        replicas = {"target": self._target, "running": running, **states}
        return {"status": word, "replicas": replicas}, code
