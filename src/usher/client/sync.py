"""The synchronous client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from httpx_sse import connect_sse

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


class Client(ActionMethods[Operation]):
    """Talks to an Usher controller; every non-2xx answer raises :class:`UsherError`.

    ``url`` and ``token`` default as :func:`usher.client.config.resolve` says. ``transport``
    replaces httpx's network transport (tests pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        ca_file: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = resolve(url, token, ca_file=ca_file)
        self.url = settings.url
        self._http = httpx.Client(**protocol.http_options(settings, timeout), transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        try:
            response = self._http.request(**call.request_args())
        except httpx.TransportError as exc:
            raise protocol.transport_error(exc, self.url) from exc
        return protocol.decode(call, response)

    def _drive(self, flow: Flow[T]) -> T:
        try:
            call = next(flow)
            while True:
                call = flow.send(self._call(call))
        except StopIteration as stop:
            return stop.value

    def _all(self, page_call: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self._call(page_call(cursor))
            yield from page.items
            if not (cursor := page.next):
                return

    def request(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        """Call any route under ``/v1`` (``path`` like ``/tokens``), such as one a plugin
        added; returns the decoded JSON answer, raises :class:`UsherError` on an error."""
        return self._call(protocol.raw(method, path, params=params, body=body))

    def whoami(self) -> Principal:
        return self._call(protocol.whoami())

    def create_vms(
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
        return self._call(
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

    def plan_start(
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
        return self._call(
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

    def plan_migrate(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Plan:
        """Dry run of :meth:`migrate`: where each VM would go; nothing changes."""
        return self._call(
            protocol.plan_migrate(vms=vms, cluster=cluster, target_node=target_node, kwargs=kwargs)
        )

    def list_vms(
        self,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: VMState | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[VM]:
        return self._call(
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
    ) -> Iterator[VM]:
        """Every matching VM, fetching pages as needed."""
        return self._all(
            lambda cursor: protocol.list_vms(
                cluster=cluster, owner=owner, node=node, state=state, limit=page_size, cursor=cursor
            )
        )

    def get_vm(self, vm: str) -> VM:
        """A VM by id or name."""
        return self._call(protocol.get_vm(vm))

    def action(
        self,
        kind: OpKind | str,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Operation:
        return self._call(
            protocol.action(kind, vms=vms, cluster=cluster, target_node=target_node, kwargs=kwargs)
        )

    def get_operation(self, op: str | Operation) -> Operation:
        return self._call(protocol.get_operation(op))

    def cancel(self, op: str | Operation) -> Operation:
        """Cancel what can be of an operation (steps not begun; running migrations)."""
        return self._call(protocol.cancel(op))

    def list_operations(
        self,
        status: OpStatus | str | None = None,
        kind: OpKind | str | None = None,
        vm: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Operation]:
        """Operations, newest first."""
        return self._call(
            protocol.list_operations(status=status, kind=kind, vm=vm, limit=limit, cursor=cursor)
        )

    def wait(
        self,
        op: str | Operation,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        poll: float = 2.0,
    ) -> Operation:
        """Wait until the operation is done (or ``timeout`` seconds pass) and return it.

        ``on_progress(op)`` is called after every poll, ``poll`` seconds apart at most.
        """
        return self._drive(protocol.wait(op, timeout=timeout, on_progress=on_progress, poll=poll))

    def nodes(self) -> list[Node]:
        return self._call(protocol.nodes())

    def node(self, name: str) -> Node:
        return self._call(protocol.node(name))

    def drain(self, name: str) -> Node:
        """Place no new VMs on the node."""
        return self._call(protocol.drain(name))

    def undrain(self, name: str) -> Node:
        return self._call(protocol.undrain(name))

    def evacuate(self, name: str) -> Operation:
        """Move every VM off the node (running ones live, stopped ones cold)."""
        return self._call(protocol.evacuate(name))

    def maintenance(self, name: str) -> Operation:
        """Put the node in maintenance (no new VMs) and evacuate it."""
        return self._call(protocol.maintenance(name))

    def activate(self, name: str) -> Node:
        """Return the node from maintenance."""
        return self._call(protocol.activate(name))

    def console(self, vm: str, offset: int = 0) -> ConsoleChunk:
        """The VM's serial console output from byte ``offset``."""
        return self._call(protocol.console(vm, offset))

    def images(self) -> list[Image]:
        return self._call(protocol.images())

    def image(self, name: str) -> Image:
        return self._call(protocol.image(name))

    def import_image(self, path: str | Path, name: str, description: str = "") -> Image:
        """Upload the qcow2 file at ``path`` into the catalogue as ``name``."""
        with open(path, "rb") as fh:
            return self._call(protocol.import_image(name, _chunks(fh), description))

    def delete_image(self, name: str) -> None:
        self._call(protocol.delete_image(name))

    def events(
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
        return self._call(
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
    ) -> Iterator[Event]:
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

    def stream_events(
        self, name: str | None = None, vm: str | None = None, node: str | None = None
    ) -> Iterator[Event]:
        """Events as they happen, until the caller stops iterating or the stream ends."""
        call = protocol.event_stream(name=name, vm=vm, node=node)
        try:
            with connect_sse(self._http, **call.request_args()) as source:
                if source.response.is_error:
                    source.response.read()
                protocol.check(source.response)
                for sse in source.iter_sse():
                    if (event := protocol.decode_sse(call, sse)) is not None:
                        yield event
        except httpx.TransportError as exc:
            raise protocol.transport_error(exc, self.url) from exc


def _chunks(fh: Any, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk
