"""What every HTTP request meets before a route reads a byte of its body.

* A body larger than the route takes is refused with ``413`` at once when its
  ``Content-Length`` says so, and as soon as it grows past the limit when it is streamed.
* A request that carries a body (``POST``, ``PUT``, ``PATCH``, ``DELETE``) is authenticated
  first: without a valid token it is refused with ``401`` and its body is never read. Only
  ``POST /v1/login`` is open, with a small limit.

So an anonymous client cannot make the controller buffer and parse megabytes, and the
authenticated principal is handed on to the route (it is not authenticated twice).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from usher import wire
from usher.ctrl.engine import RequestError

PRINCIPAL_KEY = "usher.principal"
"""Where in the request's ``scope["state"]`` the authenticated principal waits for the route."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_ROUTES = {("POST", "/v1/login"): 16 * 1024}
"""Routes with a body that need no token, with the most they may carry."""
UPLOAD_ROUTE = re.compile(r"^/v1/images/[^/]+$")
MAX_UPLOAD = 64 * 1024**3
"""Largest image upload (``POST /v1/images/{name}``)."""


class Guard:
    """ASGI middleware: body limits and authentication before the body (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctrl = scope["app"].state.ctrl
        method, path = scope["method"], scope["path"]
        limit = self._limit(method, path, ctrl.settings.max_body_bytes)
        length = _content_length(scope)
        if length is not None and length > limit:
            await _answer(send, 413, f"request body larger than {limit} bytes")
            return
        if method in BODY_METHODS and (method, path) not in OPEN_ROUTES:
            try:
                principal = await ctrl.authenticate(_bearer(scope))
            except RequestError as exc:
                await _answer(send, exc.status, exc.message)
                return
            scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        started = answered = False
        seen = 0

        async def counted() -> Message:
            """The body as it comes; past the limit, the 413 goes out at once and the route
            hears that the client went away (it reads no more)."""
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not started:
                    answered = True
                    await _answer(send, 413, f"request body larger than {limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the route's own answer to a body it could not read goes nowhere
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)

    @staticmethod
    def _limit(method: str, path: str, default: int) -> int:
        if method == "POST" and UPLOAD_ROUTE.match(path):
            return MAX_UPLOAD
        return OPEN_ROUTES.get((method, path), default)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    return int(text) if text.isdigit() and len(text) < 20 else None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _answer(send: Send, status: int, error: str) -> None:
    """An error answer in the API's shape (``{"error", "detail"}``); the connection is
    closed after it, so an unread body does not linger."""
    body = wire.dumps({"error": error, "detail": None}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
