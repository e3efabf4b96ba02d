"""Broken plugins for the fault scenarios (enabled as ``faults.fault_plugins:Name``)."""

from __future__ import annotations

import asyncio
import time

from usher import hookimpl
from usher.model import Event, OpRequest


class AuthorizeRaises:
    """A decision hook with a bug."""

    @hookimpl
    def authorize(self, principal, action, target=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("authorize plugin bug")


class StartRequestRaises:
    @hookimpl
    def start_request(self, request: OpRequest) -> None:
        raise RuntimeError("start_request plugin bug")


class StartRequestHangs:
    @hookimpl
    async def start_request(self, request: OpRequest) -> None:
        await asyncio.sleep(60)


class EventRaises:
    @hookimpl
    def usher_event(self, event: Event) -> None:
        raise RuntimeError(f"notification plugin bug on {event.name}")


class EventHangs:
    @hookimpl
    async def usher_event(self, event: Event) -> None:
        await asyncio.sleep(60)


class EventBlocks:
    """A notification hook that blocks its thread (synchronous sleep)."""

    @hookimpl
    def usher_event(self, event: Event) -> None:
        time.sleep(3)
