"""The OpenAI error envelope `{"error": {message, type, param, code}}` and its exception handlers.

`code` is a string or null as the spec says (vLLM and llama.cpp send the HTTP status there);
validation errors name the offending field in `param` as a path such as `thoughts.tokens` or
`messages[0].content`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

ERROR_TYPES = {
    401: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}
GENERATION_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# pydantic puts union members ("str", "list[int]", "function-after[...]") into error locations.
_FIELD = re.compile(r"^[a-z_][a-z0-9_]*$")
_WRAPPER = re.compile(r"function-\w+\[\w+\(\), ")
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


class APIError(Exception):
    """An error answered in the OpenAI envelope; raise it anywhere in the request path."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers

    @property
    def type(self) -> str:
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def param_path(loc: Sequence[int | str]) -> str | None:
    """("body", "messages", 0, "content", "str") -> "messages[0].content"."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_TAGS:
            path += f".{part}" if path else part
    return path or None


def _union_member(loc: Sequence[int | str]) -> tuple[str | None, str | None]:
    """(path of the union field, member tag) when the error lies inside a union member."""
    for i, part in enumerate(loc):
        if isinstance(part, str) and (not _FIELD.match(part) or part in _TYPE_TAGS):
            return param_path(loc[:i]), part
    return None, None


def _in_model_member(loc: Sequence[int | str]) -> bool:
    """The error lies in a field of an object that matched a union member (e.g. thoughts.tokens
    of `thoughts: ThoughtOptions | bool`), so it names the real problem."""
    _, tag = _union_member(loc)
    after = loc[list(loc).index(tag) + 1 :] if tag is not None else ()
    return any(isinstance(p, str) and _FIELD.match(p) and p not in _TYPE_TAGS for p in after)


def _readable(tag: str | None) -> str:
    """ "list[function-after[f(), Part]]" -> "list[Part]" (validators wrap union tags)."""
    tag, wrappers = _WRAPPER.subn("", tag or "")
    return tag[: len(tag) - wrappers] if wrappers else tag


def from_validation_errors(errors: Sequence[Any]) -> APIError:
    """The most specific pydantic error as a 400 with `param`: our own "unsupported" errors
    first, then the deepest; a value matching no member of a union names the union's forms."""
    if not errors:
        return bad_request("invalid request")
    locs = [tuple(p for p in e["loc"] if p != "body") for e in errors]
    best = max(
        range(len(errors)),
        key=lambda i: (errors[i]["type"] == "unsupported", len(param_path(locs[i]) or "")),
    )
    error, loc = errors[best], locs[best]
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "json_invalid":
        return bad_request(
            f"malformed JSON body: {ctx.get('error', 'decode error')}", code="invalid_json"
        )
    if kind == "unsupported":
        return bad_request(error["msg"], ctx.get("param") or param_path(loc))
    union, _ = _union_member(loc)
    if union is not None:
        inside = [i for i, where in enumerate(locs) if _in_model_member(where)]
        if not inside:  # the value has none of the union's shapes
            forms = dict.fromkeys(
                _readable(tag) for where, tag in map(_union_member, locs) if where == union
            )
            return bad_request(
                f"{union}: invalid value; expected one of: {', '.join(forms)}", union
            )
        error = errors[max(inside, key=lambda i: len(param_path(locs[i]) or ""))]
        loc, kind = tuple(p for p in error["loc"] if p != "body"), error["type"]
    param = param_path(loc)
    if param is None and kind in ("model_attributes_type", "dict_type", "model_type"):
        if isinstance(error.get("input"), bytes | str):  # FastAPI left a non-JSON body as is
            return bad_request(
                "the request body was not parsed as JSON: send the header "
                "`Content-Type: application/json`",
                code="invalid_json",
            )
        return bad_request("the request body must be a JSON object")
    if kind == "missing":
        return bad_request(f"{param} is required", param)
    if kind == "extra_forbidden":
        return bad_request(f"{param} is not a known field", param)
    given = repr(error.get("input"))
    message = f"{param}: {error['msg']}" + (f" (got {given})" if len(given) <= 80 else "")
    return bad_request(message, param)


def http_error(request: Request, status: int, detail: str | None) -> APIError:
    if status == 404:
        return APIError(404, f"Invalid URL ({request.method} {request.url.path})")
    if status == 405:
        return APIError(405, f"method {request.method} is not allowed on {request.url.path}")
    if status == 413:
        return APIError(413, detail or "request body too large", code="request_too_large")
    return APIError(status, detail or "HTTP error")


def _answer(request: Request, error: APIError) -> JSONResponse:
    """The envelope; counts the request unless a generation job already did."""
    endpoint = GENERATION_ENDPOINTS.get(request.url.path)
    if endpoint is not None and getattr(request.state, "job", None) is None:
        status = error.status
        outcome = "rejected" if status == 429 else "invalid" if status < 500 else "error"
        request.app.state.metrics.count_request(endpoint, outcome)
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        return _answer(request, exc)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _answer(request, from_validation_errors(exc.errors()))

    async def on_pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        return _answer(request, from_validation_errors(exc.errors()))

    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        return _answer(request, http_error(request, exc.status_code, exc.detail))

    async def on_internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=exc)
        return _answer(
            request,
            APIError(500, f"internal server error ({type(exc).__name__}); see the server log"),
        )

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_pydantic)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_internal)
