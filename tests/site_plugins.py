"""Plugins a site might write, used by the end-to-end tests (loaded as ``site_plugins:Name``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from usher import Veto, hookimpl
from usher.ctrl.api.deps import PrincipalDep
from usher.guest_config import GuestConfig
from usher.model import VM, Event, OpRequest, Principal, Scope


class Policy:
    """Vetoes clusters named in its config and tags the spec of tagged requests."""

    closed: frozenset[str] = frozenset()

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        self.closed = frozenset(config.get("closed", []))

    @hookimpl
    def start_request(self, request: OpRequest) -> None:
        if request.cluster in self.closed:
            raise Veto(f"cluster {request.cluster!r} is closed for maintenance")
        if "tag" in request.kwargs and request.spec is not None:
            request.spec.kwargs["tagged_by"] = "policy"


class Boom:
    """A notification plugin that always fails."""

    @hookimpl
    def usher_event(self, event: Event) -> None:
        raise RuntimeError(f"boom on {event.name}")


class Sleepy:
    """A notification plugin that hangs far past the notification timeout."""

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        await asyncio.sleep(60)


class BrokenStopPolicy:
    """A request plugin with a bug."""

    @hookimpl
    def stop_request(self, request: OpRequest) -> None:
        raise KeyError("missing-setting")


class Alice:
    """Authenticates a fixed token as the ordinary user alice, who sees only her own."""

    TOKEN = "ush_alice-test-token"

    @hookimpl
    def authenticate(self, token: str) -> Principal | None:
        return Principal(name="alice", roles=["user"]) if token == self.TOKEN else None

    @hookimpl
    def scope(self, principal: Principal) -> Scope | None:
        if principal.is_admin:
            return None
        return Scope(owners=[principal.name], principals=[principal.name])


class TinyIpam:
    """Hands out the three addresses of a toy range, never one twice."""

    def __init__(self) -> None:
        self.free = [f"192.0.2.{i}" for i in (10, 11, 12)]
        self.held: dict[str, str] = {}

    @hookimpl
    def allocate_address(self, vm: VM, request: OpRequest) -> list[dict[str, Any]]:
        if not self.free:
            raise Veto("range toy is full")
        address = self.free.pop(0)
        self.held[vm.id] = address
        return [
            {
                "mac": "52:54:00:00:00:" + address.rsplit(".", 1)[1],
                "network": "default",
                "address": address,
            }
        ]

    @hookimpl
    def release_address(self, vm: VM) -> None:
        self.free.append(self.held.pop(vm.id))

    @hookimpl
    def usher_event(self, event: Event) -> None:
        if event.name == "unregister" and event.vm_id in self.held:
            self.free.append(self.held.pop(event.vm_id))

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/toy-ipam")

        @router.get("/free")
        async def free(principal: PrincipalDep) -> dict[str, Any]:
            return {"free": sorted(self.free), "asked_by": principal.name}

        return [router]


class Students:
    """Authenticates fixed tokens as users of the group students (s1, s2) or of none (t1)."""

    @hookimpl
    def authenticate(self, token: str) -> Principal | None:
        if token in ("ush_s1", "ush_s2"):
            return Principal(name=token.removeprefix("ush_"), roles=["user"], groups=["students"])
        if token == "ush_t1":
            return Principal(name="t1", roles=["user"])
        return None


class SeedRecorder:
    """Writes each guest's cloud-config, as the plugins before it left it, to
    ``<dir>/<vm name>.json`` (enable it last)."""

    directory: str = ""

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        self.directory = config["dir"]

    @hookimpl
    def guest_config(self, vm: VM, config: GuestConfig) -> None:
        Path(self.directory, f"{vm.name}.json").write_text(json.dumps(config.cloud_config()))
