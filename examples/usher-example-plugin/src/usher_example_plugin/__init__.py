"""An example Usher plugin: caps the VMs one start may create, and counts events.

Enable and configure it in the controller's config::

    [plugins]
    enabled = ["tokens", "scheduler", "eventlog", "vmcap"]

    [plugins.vmcap]
    max_vms = 8

``GET /v1/vmcap/counts`` answers how many events of each name it has seen.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter

from usher.model import Event, OpRequest
from usher.plugin import ContextDep, PluginContext, PrincipalDep, Veto, allow, hookimpl


class VmCap:
    """The controller makes one instance per run: state lives on ``self``."""

    def __init__(self) -> None:
        self.max_vms = 10
        self.counts: Counter[str] = Counter()

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        # config is this plugin's own table, [plugins.vmcap]; refuse a bad one at start
        self.max_vms = int(config.get("max_vms", self.max_vms))
        if self.max_vms < 1:
            raise ValueError("[plugins.vmcap] max_vms must be at least 1")
        ctx.logger("vmcap").info("at most %d VMs per start", self.max_vms)

    @hookimpl
    def start_request(self, request: OpRequest) -> None:
        # a request hook: runs before anything happens; raising Veto refuses the request
        if request.count > self.max_vms:
            raise Veto(f"at most {self.max_vms} VMs per start; you asked for {request.count}")

    @hookimpl
    def usher_event(self, event: Event) -> None:
        # a notification hook: every event, after the fact, in a worker of its own
        self.counts[event.name] += 1

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/vmcap", tags=["vmcap"])

        @router.get("/counts")
        async def counts(ctx: ContextDep, principal: PrincipalDep) -> dict[str, int]:
            await allow(ctx, principal, "vmcap.counts")  # the authorize hook decides
            return dict(self.counts)

        return [router]
