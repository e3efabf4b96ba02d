"""The controller's ASGI application: REST API, event stream and LNM link."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

import usher
from usher.ctrl.api import (
    consoles,
    documented,
    errors,
    events,
    images,
    lnm,
    metrics,
    nodes,
    operations,
    search,
    snapshots,
    ui,
    usage,
    vms,
)
from usher.ctrl.api.guard import Guard
from usher.ctrl.config import Settings
from usher.ctrl.controller import Controller


def create_app(settings: Settings, extra_plugins: dict[str, Any] | None = None) -> FastAPI:
    ctrl = Controller(settings, extra_plugins)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctrl.start()
        try:
            yield
        finally:
            await ctrl.stop()

    app = FastAPI(
        title="Usher",
        version=usher.__version__,
        description="Usher controller API: VM operations, nodes, operations and events.",
        lifespan=lifespan,
    )
    app.state.ctrl = ctrl
    app.add_middleware(Guard)
    errors.install(app)
    for module in (
        vms,
        snapshots,
        consoles,
        operations,
        nodes,
        events,
        images,
        lnm,
        search,
        usage,
        metrics,
        ui,
    ):
        app.include_router(module.router)
    for router in ctrl.plugins.routers():
        app.include_router(router, prefix="/v1")
    documented.install(app)
    return app
