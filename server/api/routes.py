"""Thin routes: FastAPI validates the body against the protocol models, serving does the rest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api.errors import APIError
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.responses import ChatCompletion, Completion, ErrorResponse, Model, ModelList
from server.api.serving import Serving
from server.api.serving_chat import create_chat_completion
from server.api.serving_completion import create_completion

router = APIRouter()
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 429, 500, 503)
}
SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "the response, or server-sent chunks when `stream` is true",
    }
}


def serving_of(request: Request) -> Serving:
    """The loaded model, or 503 while it loads (or after it failed, or while stopping)."""
    state = request.app.state
    if state.status == "ready":
        return state.serving
    if state.status == "failed":
        raise APIError(
            503, f"the model failed to load: {state.load_error}", code="model_load_failed"
        )
    if state.status == "dead":
        raise APIError(503, f"{state.load_error}; the server is stopping", code="engine_dead")
    if state.status == "stopping":
        raise APIError(503, "the server is shutting down", code="shutting_down")
    raise APIError(
        503,
        "the model is still loading; retry when GET /health returns 200",
        code="model_loading",
        headers={"Retry-After": "5"},
    )


@router.get("/health", responses={503: {"description": "loading, failed, dead or stopping"}})
async def health(request: Request) -> JSONResponse:
    state = request.app.state
    replica_health = getattr(state.engine, "replica_health", None)  # --replicas: Ray's counts
    if state.status == "ready" and replica_health is not None:
        body, status = await replica_health()
        return JSONResponse(body, status_code=status)
    if state.status == "ready":
        return JSONResponse({"status": "ok"})
    body = {"status": state.status}
    if state.load_error:
        body["error"] = state.load_error
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[serving_of(request).model_card()])


@router.get("/v1/models/{model_id:path}", response_model=Model, responses=ERRORS)
async def retrieve_model(model_id: str, request: Request) -> Model:
    serving = serving_of(request)
    serving.check_model(model_id)
    return serving.model_card()


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses={**ERRORS, **SSE})
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await create_chat_completion(serving_of(request), body, request)


@router.post("/v1/completions", response_model=Completion, responses={**ERRORS, **SSE})
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await create_completion(serving_of(request), body, request)
