"""The asynchronous client: the same methods as :class:`~usher.client.sync.Client`, awaited."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import aconnect_sse

from usher.client import protocol
from usher.client.actions import ActionMethods
from usher.client.config import resolve
from usher.client.protocol import Call, Flow, ProgressCallback
from usher.model import (
    VM,
    ConsoleChunk,
    Event,
    Image,
    Node,
    Operation,
    OpKind,
    OpStatus,
    Page,
    Plan,
    Principal,
    VMState,
)

T = TypeVar("T")


class AsyncClient(ActionMethods[Coroutine[Any, Any, Operation]]):
    """Talks to an Usher controller from asyncio; see :class:`~usher.client.sync.Client`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        ca_file: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        settings = resolve(url, token, ca_file=ca_file)
        self.url = settings.url
        self._http = httpx.AsyncClient(
            **protocol.http_options(settings, timeout), transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(**call.request_args())
        except httpx.TransportError as exc:
            raise protocol.transport_error(exc, self.url) from exc
        return protocol.decode(call, response)

    async def _drive(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                call = flow.send(await self._call(call))
        except StopIteration as stop:
            return stop.value

    async def _all(self, page_call: Callable[[str | None], Call[Page[T]]]) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self._call(page_call(cursor))
            for item in page.items:
                yield item
            if not (cursor := page.next):
                return

    async def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Call any route under ``/v1`` (``path`` like ``/tokens``), such as one a plugin
        added; returns the decoded JSON answer, raises :class:`UsherError` on an error."""
        return await self._call(protocol.raw(method, path, params=params, body=body))

    async def whoami(self) -> Principal:
        return await self._call(protocol.whoami())

    async def create_vms(
        self,
        count: int = 1,
        names: Sequence[str] | None = None,
        name_prefix: str | None = None,
        cluster: str | None = None,
        vcpus: int = 1,
        memory_mb: int = 256,
        image: str = "tiny",
        node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Operation:
        """Start ``count`` new VMs (or one per entry of ``names``); see ``CreateVMs``."""
        return await self._call(
            protocol.create_vms(
                count=count,
                names=names,
                name_prefix=name_prefix,
                cluster=cluster,
                vcpus=vcpus,
                memory_mb=memory_mb,
                image=image,
                node=node,
                kwargs=kwargs,
            )
        )

    async def plan_start(
        self,
        count: int = 1,
        names: Sequence[str] | None = None,
        name_prefix: str | None = None,
        cluster: str | None = None,
        vcpus: int = 1,
        memory_mb: int = 256,
        image: str = "tiny",
        node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Plan:
        """Dry run of :meth:`create_vms`: where the VMs would go; nothing changes."""
        return await self._call(
            protocol.plan_start(
                count=count,
                names=names,
                name_prefix=name_prefix,
                cluster=cluster,
                vcpus=vcpus,
                memory_mb=memory_mb,
                image=image,
                node=node,
                kwargs=kwargs,
            )
        )

    async def plan_migrate(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Plan:
        """Dry run of :meth:`migrate`: where each VM would go; nothing changes."""
        return await self._call(
            protocol.plan_migrate(vms=vms, cluster=cluster, target_node=target_node, kwargs=kwargs)
        )

    async def list_vms(
        self,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: VMState | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[VM]:
        return await self._call(
            protocol.list_vms(
                cluster=cluster, owner=owner, node=node, state=state, limit=limit, cursor=cursor
            )
        )

    def iter_vms(
        self,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: VMState | str | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[VM]:
        """Every matching VM, fetching pages as needed."""
        return self._all(
            lambda cursor: protocol.list_vms(
                cluster=cluster, owner=owner, node=node, state=state, limit=page_size, cursor=cursor
            )
        )

    async def get_vm(self, vm: str) -> VM:
        """A VM by id or name."""
        return await self._call(protocol.get_vm(vm))

    async def action(
        self,
        kind: OpKind | str,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Operation:
        return await self._call(
            protocol.action(kind, vms=vms, cluster=cluster, target_node=target_node, kwargs=kwargs)
        )

    async def get_operation(self, op: str | Operation) -> Operation:
        return await self._call(protocol.get_operation(op))

    async def cancel(self, op: str | Operation) -> Operation:
        """Cancel what can be of an operation (steps not begun; running migrations)."""
        return await self._call(protocol.cancel(op))

    async def list_operations(
        self,
        status: OpStatus | str | None = None,
        kind: OpKind | str | None = None,
        vm: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Operation]:
        """Operations, newest first."""
        return await self._call(
            protocol.list_operations(status=status, kind=kind, vm=vm, limit=limit, cursor=cursor)
        )

    async def wait(
        self,
        op: str | Operation,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll: float = 2.0,
    ) -> Operation:
        """Wait until the operation is done (or ``timeout`` seconds pass) and return it.

        ``on_progress(op)`` is called after every poll, ``poll`` seconds apart at most.
        """
        return await self._drive(
            protocol.wait(op, timeout=timeout, on_progress=on_progress, poll=poll)
        )

    async def nodes(self) -> list[Node]:
        return await self._call(protocol.nodes())

    async def node(self, name: str) -> Node:
        return await self._call(protocol.node(name))

    async def drain(self, name: str) -> Node:
        """Place no new VMs on the node."""
        return await self._call(protocol.drain(name))

    async def undrain(self, name: str) -> Node:
        return await self._call(protocol.undrain(name))

    async def evacuate(self, name: str) -> Operation:
        """Move every VM off the node (running ones live, stopped ones cold)."""
        return await self._call(protocol.evacuate(name))

    async def maintenance(self, name: str) -> Operation:
        """Put the node in maintenance (no new VMs) and evacuate it."""
        return await self._call(protocol.maintenance(name))

    async def activate(self, name: str) -> Node:
        """Return the node from maintenance."""
        return await self._call(protocol.activate(name))

    async def console(self, vm: str, offset: int = 0) -> ConsoleChunk:
        """The VM's serial console output from byte ``offset``."""
        return await self._call(protocol.console(vm, offset))

    async def images(self) -> list[Image]:
        return await self._call(protocol.images())

    async def image(self, name: str) -> Image:
        return await self._call(protocol.image(name))

    async def import_image(self, path: str | Path, name: str, description: str = "") -> Image:
        """Upload the qcow2 file at ``path`` into the catalogue as ``name``."""
        with open(path, "rb") as fh:
            return await self._call(protocol.import_image(name, fh.read(), description))

    async def delete_image(self, name: str) -> None:
        await self._call(protocol.delete_image(name))

    async def events(
        self,
        name: str | None = None,
        vm: str | None = None,
        node: str | None = None,
        operation: str | None = None,
        since: float | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Event]:
        """Recorded events, oldest first; ``since`` is in seconds since the epoch."""
        return await self._call(
            protocol.events(
                name=name,
                vm=vm,
                node=node,
                operation=operation,
                since=since,
                limit=limit,
                cursor=cursor,
            )
        )

    def iter_events(
        self,
        name: str | None = None,
        vm: str | None = None,
        node: str | None = None,
        operation: str | None = None,
        since: float | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Event]:
        """Every matching recorded event, oldest first, fetching pages as needed."""
        return self._all(
            lambda cursor: protocol.events(
                name=name,
                vm=vm,
                node=node,
                operation=operation,
                since=since,
                limit=page_size,
                cursor=cursor,
            )
        )

    async def stream_events(
        self, name: str | None = None, vm: str | None = None, node: str | None = None
    ) -> AsyncIterator[Event]:
        """Events as they happen, until the caller stops iterating or the stream ends."""
        call = protocol.event_stream(name=name, vm=vm, node=node)
        try:
            async with aconnect_sse(self._http, **call.request_args()) as source:
                if source.response.is_error:
                    await source.response.aread()
                protocol.check(source.response)
                async for sse in source.aiter_sse():
                    if (event := protocol.decode_sse(call, sse)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise protocol.transport_error(exc, self.url) from exc
