"""Every error the API returns is JSON ``{"error": <sentence>, "detail": ...}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from usher.ctrl.authz import Forbidden
from usher.ctrl.engine import RequestError


def _body(
    status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _describe(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _body(exc.status, exc.message, exc.detail)

    @app.exception_handler(Forbidden)
    async def forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _body(403, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [dict(e) for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in errors):
            return _body(400, "malformed JSON in the request body", None)
        for e in errors:
            e.pop("ctx", None)
            e.pop("url", None)
            e.pop("input", None)
        return _body(422, "invalid request: " + "; ".join(_describe(e) for e in errors), errors)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # (a 405's Allow header, say, goes with it)
        return _body(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeout)
    async def database_down(_: Request, exc: Exception) -> JSONResponse:
        cause = getattr(exc, "orig", None) or exc  # the driver's error, not SQLAlchemy's
        lines = str(cause).strip().splitlines()
        first_line = lines[0] if lines else repr(cause)
        return _body(
            503,
            f"the controller's database is unavailable, try again shortly: {first_line}",
        )

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return _body(400, str(exc))
