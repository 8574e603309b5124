"""Request gates: bearer-key auth on /v1/*, the body-size limit (413 before parsing), and
admission (a bounded number of generation requests in flight; 429 beyond it)."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import APIError


class AuthMiddleware:
    """/v1/* needs `Authorization: Bearer <key>`; /health and /metrics stay open, and CORS
    preflights (OPTIONS) pass."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1")
            and scope["method"] != "OPTIONS"
        ):
            error = self.check(Headers(scope=scope).get("authorization"))
            if error is not None:
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def check(self, header: str | None) -> APIError | None:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            message = "missing API key: send the header `Authorization: Bearer <key>`"
        elif not hmac.compare_digest(token.strip().encode(), self.key):
            message = "incorrect API key"
        else:
            return None
        return APIError(
            401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body without Content-Length passes the limit; FastAPI
    re-raises HTTPExceptions met while reading the body, so it becomes a 413 envelope."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, f"request body exceeds the server's limit of {limit} bytes (--max-body-bytes)"
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            await APIError(413, error.detail, code="request_too_large").response()(
                scope, receive, send
            )
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class Admission:
    """Counts generation requests in flight; `capacity` = engine slots + --queue-size."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.in_flight = capacity, 0

    def acquire(self) -> None:
        if self.in_flight >= self.capacity:
            raise APIError(
                429,
                f"the server is at capacity ({self.capacity} requests running "
                "or queued); retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            )
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
