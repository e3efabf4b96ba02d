"""Every status code a route answers, declared in the OpenAPI document.

FastAPI declares a route's success and its ``422``; the others come from what every route
meets on its way (:mod:`usher.ctrl.api.guard`, authentication, authorization, the
database) and from what it does. They are added here from each route's shape, so a route a
plugin adds is declared like the core's, and a client (or schemathesis) can rely on the
document: an answer whose status is not declared is a bug.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from usher.ctrl.api.guard import BODY_METHODS, OPEN_ROUTES

WHY = {
    "400": "malformed JSON, or a malformed cursor",
    "401": "no token, or one that is invalid, expired or revoked",
    "403": "not allowed (authorization, a plugin's veto, a node credential)",
    "404": "no such thing (or one the caller may not see)",
    "409": "in conflict with the state (a VM's state, a name taken, no capacity, …)",
    "413": "the request body is larger than the route takes",
    "422": "a value out of bounds or of the wrong type",
    "429": "too many failed logins: try again later",
    "503": "the controller's database is unavailable: try again shortly",
}


def _statuses(method: str, path: str) -> set[str]:
    open_route = (method, path) in OPEN_ROUTES
    codes = {"400", "401", "404", "422", "503"}  # (a filter may name what does not exist)
    if not open_route:
        codes.add("403")
    if method in BODY_METHODS:
        codes |= {"409", "413"}
    if open_route:
        codes.add("429")
    return codes


def install(app: FastAPI) -> None:
    """Have ``app``'s OpenAPI document declare every status each route answers."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema.setdefault("components", {}).setdefault("schemas", {})["ErrorBody"] = {
            "title": "ErrorBody",
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "detail": {}},
        }
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                for code in sorted(_statuses(method.upper(), path)):
                    responses.setdefault(code, {"description": WHY[code], "content": error})
                    if code == "422":  # FastAPI's own shape for its 422 is not ours
                        responses[code] = {"description": WHY[code], "content": error}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
