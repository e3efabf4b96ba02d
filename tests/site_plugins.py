"""Plugins a site might write, used by the end-to-end tests (loaded as ``site_plugins:Name``)."""

from __future__ import annotations

import asyncio
from typing import Any

from usher import Veto, hookimpl
from usher.model import Event, OpRequest


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
