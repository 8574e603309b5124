"""The two Ray Serve deployments and the application that binds them.

`EngineReplica`: one engine (the usual EngineCoreClient or AsyncEngine, `--engine-core`) per
Ray actor, streaming its RequestOutputs to the ingress; Ray restarts it when its health check
fails (engine core dead) or its process dies. `Ingress`: the FastAPI app of `server.api`, served
by Ray's HTTP proxy, with a ReplicaEngineClient in the engine's place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from server.config import ServerConfig, configure_logging
from server.engine import EngineConfig, RequestOutput, SamplingParams, ScoreOutput, ThoughtParams
from server.replicas.engine_client import ReplicaEngineClient, ReplicaInfo

log = logging.getLogger(__name__)
APP_NAME = "quietstar"
HEALTH_CHECK_PERIOD_S = 2.0  # a dead engine core is noticed (and the replica replaced) this fast
INGRESS_SPARE = 16  # /health, /metrics and /v1/models beside the generation requests


class EngineReplica:
    async def __init__(self, config: EngineConfig, engine_core: str, log_level: str) -> None:
        configure_logging(log_level)
        import server.engine

        kind = (
            server.engine.EngineCoreClient
            if engine_core == "process"
            else server.engine.AsyncEngine
        )
        self.engine = await asyncio.to_thread(kind, config)
        self.engine.start()  # on the replica's event loop
        log.info("engine replica ready (%s core, pid %d)", engine_core, os.getpid())

    def info(self) -> ReplicaInfo:
        limits = getattr(self.engine, "limits", None)
        if limits is None:  # AsyncEngine: the engine is in this process
            from server.engine.limits import RequestLimits

            limits = RequestLimits.of(self.engine.engine)
        return ReplicaInfo(self.engine.model_info, limits, self.engine.tokenizer)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        async for out in self.engine.generate(request_id, prompt_ids, params):
            yield out

    async def score(
        self, prompt_ids: list[int], thoughts: ThoughtParams, top_logprobs: int, seed: int | None
    ) -> ScoreOutput:
        return await self.engine.score(prompt_ids, thoughts, top_logprobs, seed)

    def check_health(self) -> None:
        """Ray Serve calls this every HEALTH_CHECK_PERIOD_S; raising makes it replace us."""
        dead = getattr(self.engine, "dead", None)
        if dead is not None:
            raise dead

    def __del__(self) -> None:  # Ray Serve calls this after draining the replica
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


@serve.ingress()
class Ingress:
    async def __init__(self, config: ServerConfig, engines: DeploymentHandle) -> None:
        configure_logging(config.log_level)
        self.config = config
        self.client = await ReplicaEngineClient.connect(engines, APP_NAME, config.replicas or 1)

    def __serve_build_asgi_app__(self) -> Any:
        from server.api import build_app

        return build_app(self.config, self.client)


def build_application(config: ServerConfig, num_gpus: float) -> Application:
    """Ingress → N engine replicas, each with `--replica-cpus` CPUs and `num_gpus` GPUs."""
    replicas = config.replicas or 1
    engine_config = config.engine
    if engine_config.device.startswith("cuda"):  # Ray sets each replica's CUDA_VISIBLE_DEVICES
        engine_config = dataclasses.replace(engine_config, device="cuda")
    elif engine_config.num_threads is None:  # torch would take every core of the node
        threads = max(1, int(config.replica_cpus))
        engine_config = dataclasses.replace(engine_config, num_threads=threads)
    engines = serve.deployment(EngineReplica).options(
        num_replicas=replicas,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=engine_config.max_num_seqs,  # beyond it Ray routes elsewhere or queues
        graceful_shutdown_timeout_s=config.shutdown_timeout,
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
    )
    ingress = serve.deployment(Ingress).options(
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},  # HTTP and SSE only: the CPUs are the engines'
        max_ongoing_requests=replicas * engine_config.max_num_seqs
        + config.queue_size
        + INGRESS_SPARE,
        graceful_shutdown_timeout_s=config.shutdown_timeout,
    )
    return ingress.bind(config, engines.bind(engine_config, config.engine_core, config.log_level))
