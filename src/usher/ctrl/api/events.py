"""``/v1/events``: what happened (persisted by the eventlog plugin) and a live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow, visible, vm_filter
from usher.ctrl.api.params import Cursor, FilterRef, Limit, Since
from usher.model import Event, Page, Principal

router = APIRouter(prefix="/v1", tags=["events"])
KEEPALIVE_SECONDS = 15
EventName = Annotated[str | None, Query(pattern=r"^[a-z0-9_.]{1,80}$")]


@router.get("/events", response_model=Page[Event])
async def list_events(
    ctrl: CtrlDep,
    principal: PrincipalDep,
    name: EventName = None,
    vm: FilterRef = None,
    node: FilterRef = None,
    operation: FilterRef = None,
    since: Since = None,
    limit: Limit = 100,
    cursor: Cursor = None,
    newest: bool = False,
) -> Page[Event]:
    """Past events, oldest first (``newest``: newest first, for the latest few); ``vm`` is
    a VM's name or id."""
    await allow(ctrl, principal, "event.list")
    return await ctrl.store.list_events(
        scope=await visible(ctrl, principal),
        name=name,
        vm=await vm_filter(ctrl, vm),
        node=node,
        operation=operation,
        since=since,
        limit=limit,
        cursor=cursor,
        newest=newest,
    )


@router.get("/events/stream")
async def stream_events(
    request: Request,
    ctrl: CtrlDep,
    principal: PrincipalDep,
    name: EventName = None,
    vm: FilterRef = None,
    node: FilterRef = None,
) -> EventSourceResponse:
    """Server-Sent Events: one ``event: <name>`` / ``data: <Event JSON>`` per event."""
    await allow(ctrl, principal, "event.stream")
    scope = await visible(ctrl, principal)
    vm = await vm_filter(ctrl, vm)

    def wanted(ev: Event) -> bool:
        return (
            (scope is None or ev.principal in scope.principals)
            and (name is None or ev.name == name)
            and (vm is None or ev.vm_id == vm)
            and (node is None or ev.node == node)
        )

    async def feed() -> AsyncIterator[ServerSentEvent]:
        async with ctrl.bus.subscribe(wanted) as queue:
            yield ServerSentEvent(comment="subscribed")
            while not await request.is_disconnected():
                try:
                    ev = await asyncio.wait_for(queue.get(), 1.0)
                except TimeoutError:
                    continue
                yield ServerSentEvent(ev.model_dump_json(), event=ev.name, id=ev.id)

    return EventSourceResponse(feed(), ping=KEEPALIVE_SECONDS)


@router.get("/whoami", tags=["auth"], response_model=Principal)
async def whoami(principal: PrincipalDep) -> Principal:
    """Who the token belongs to."""
    return principal
