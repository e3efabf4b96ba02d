"""``/metrics``: the controller's Prometheus metrics (text format).

It needs a bearer token allowed ``metrics.read`` (a Prometheus scrape job sends one with
``authorization: {credentials_file: ...}``), unless ``[plugins.metrics] public = true``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST

from usher.ctrl.api.deps import CtrlDep, allow, authenticate_token, bearer

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(
    ctrl: CtrlDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Response:
    if not ctrl.metrics.public:
        principal = await authenticate_token(ctrl, creds.credentials if creds else None)
        await allow(ctrl, principal, "metrics.read")
    return Response(await ctrl.metrics.expose(), media_type=CONTENT_TYPE_LATEST)
