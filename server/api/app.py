"""`build_app(config, engine=None)`: the FastAPI app with its state, gates and lifespan.

With no engine given, the lifespan loads one in the background: the server answers at once,
/health says 503 until the model is ready, and a failed load stops the server
(`app.state.on_fatal`). The engine runs in its own process (`--engine-core process`, the
default) or on a thread; an engine process that dies turns /health to 503 and stops the server
too, after its in-flight requests fail with a 500. On SIGTERM, `drain` reports "stopping" on /health, lets running
requests finish for --shutdown-timeout seconds, then stops the engine so the rest end as aborted
(an error event on streams); the lifespan's end stops it in any case.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.api.errors import install_error_handlers
from server.api.metrics import ServerMetrics
from server.api.middleware import Admission, AuthMiddleware, BodyLimitMiddleware
from server.api.routes import router
from server.api.serving import Serving
from server.config import RequestDefaults, ServerConfig

log = logging.getLogger(__name__)
FATAL = ("failed", "dead")  # the model did not load; the engine process died


def build_app(config: ServerConfig, engine: Any | None = None) -> FastAPI:
    app = FastAPI(
        title="quietstar",
        version="0.1.0",
        lifespan=_lifespan,
        summary="OpenAI-compatible server for Quiet-STaR models",
        strict_content_type=False,
    )  # curl -d without a JSON content type still parses
    state = app.state
    state.config, state.engine, state.serving = config, None, None
    state.status, state.load_error, state.on_fatal = "loading", None, None
    slots = config.engine.max_num_seqs * (config.replicas or 1)  # --replicas: each its own engine
    state.admission = Admission(slots + config.queue_size)
    state.metrics = ServerMetrics(lambda: state.engine, lambda: state.admission.in_flight)
    if engine is not None:
        _attach(app, engine)
    install_error_handlers(app)
    app.include_router(router)
    # the last added middleware runs first: CORS, then auth, then the body limit
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(AuthMiddleware, api_key=config.api_key)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    return app


def _attach(app: FastAPI, engine: Any) -> None:
    state = app.state
    defaults = RequestDefaults.resolve(state.config, engine.model_info)
    state.engine = engine
    if hasattr(engine, "on_dead"):
        engine.on_dead = lambda error: _engine_died(app, error)
    state.serving = Serving(engine, defaults, state.metrics, state.admission)
    state.status = "ready"
    info = engine.model_info
    log.info(
        "ready: serving %r (%s on %s: %s), context %d tokens; thoughts %s by default "
        "(length %s, trained %d, heads %s)",
        defaults.model_name,
        info.dtype,
        info.device,
        info.dtype_reason,
        defaults.max_model_len,
        "on" if defaults.thoughts_enabled else "off",
        defaults.thought_tokens or "the checkpoint's",
        info.thought_tokens,
        "trained" if info.heads_trained else "untrained",
    )


def _engine_died(app: FastAPI, error: Exception) -> None:
    state = app.state
    state.status, state.load_error = "dead", str(error)
    log.error("%s: stopping the server", error)
    if state.on_fatal is not None:
        state.on_fatal()


async def _load(app: FastAPI) -> None:
    import server.engine

    state = app.state
    started = time.monotonic()
    log.info(
        "loading model %r (engine core: %s) ...",
        state.config.engine.model,
        state.config.engine_core,
    )
    kind = (
        server.engine.EngineCoreClient
        if state.config.engine_core == "process"
        else server.engine.AsyncEngine
    )
    try:
        engine = await asyncio.to_thread(kind, state.config.engine)
        engine.start()
        _attach(app, engine)
        log.info("model loaded in %.1fs", time.monotonic() - started)
    except Exception as e:  # noqa: BLE001 - reported on /health, then the server stops
        log.exception("loading model %r failed", state.config.engine.model)
        state.status, state.load_error = "failed", f"{type(e).__name__}: {e}"
        if state.on_fatal is not None:
            state.on_fatal()


async def drain(app: FastAPI, timeout: float) -> None:
    """The server stopped accepting connections: finish or abort what is still running."""
    if app.state.status not in FATAL:
        app.state.status = "stopping"
    await asyncio.sleep(timeout)
    if app.state.engine is not None and app.state.admission.in_flight:
        log.info(
            "%d request(s) still running after %.0fs: aborting them",
            app.state.admission.in_flight,
            timeout,
        )
        await asyncio.to_thread(app.state.engine.shutdown)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    loader = None
    if state.engine is None:
        loader = asyncio.create_task(_load(app))
    else:
        state.engine.start()
        state.status = "ready"  # again, if this app is started after a shutdown (tests)
    try:
        yield
    finally:
        if state.status not in FATAL:
            state.status = "stopping"
        if loader is not None:
            loader.cancel()
        if state.engine is not None:
            log.info("stopping the engine (running requests end as aborted)")
            await asyncio.to_thread(state.engine.shutdown)
