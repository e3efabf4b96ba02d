"""The requests of the Usher REST API (docs/api.md), written once for both clients.

Nothing here does I/O. Each function describes one method of the client API (its signature
and docstring are the method's, see :mod:`usher.client.methods`) and returns the
:class:`~usher.client.call.Call` to send, the :data:`~usher.client.call.Flow` of calls to run,
or the :data:`~usher.client.call.Paging` of a listing. The VM actions are in
:mod:`usher.client.actions`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from pydantic import TypeAdapter

from usher.client.call import Call, Flow, Paging, name_list, query, request_body, segment
from usher.model import (
    VM,
    ConsoleChunk,
    CreateVMs,
    Event,
    Image,
    Node,
    Operation,
    OpKind,
    OpStatus,
    Page,
    Plan,
    Principal,
    ResizeVM,
    SSHAccess,
    VMChange,
    VMState,
)

#: Called with the operation after every poll while waiting on it.
ProgressCallback = Callable[[Operation], object]

#: Extra seconds the HTTP read timeout allows beyond a long-poll's server-side timeout.
LONG_POLL_SLACK = 30.0


def request(
    method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
) -> Call[Any]:
    """Call any route under ``/v1`` (``path`` like ``/tokens``), such as one a plugin
    added; returns the decoded JSON answer, raises :class:`UsherError` on an error."""
    return Call(method, path, lambda answer: answer, params=query(**(params or {})), body=body)


def whoami() -> Call[Principal]:
    """Who the controller takes this client for."""
    return Call("GET", "/whoami", Principal.model_validate)


# --- VMs ---------------------------------------------------------------------------------


def create_vms(
    count: int = 1,
    names: Sequence[str] | None = None,
    name_prefix: str | None = None,
    cluster: str | None = None,
    vcpus: int = 1,
    memory_mb: int = 256,
    image: str = "tiny",
    node: str | None = None,
    kwargs: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    disk_gb: int | None = None,
    disks: Sequence[int] = (),
) -> Call[Operation]:
    """Start ``count`` new VMs (or one per entry of ``names``), each with a root disk of
    ``disk_gb`` GiB (None: its image's size) and data disks of ``disks`` GiB; see
    ``CreateVMs``."""
    body = request_body(
        CreateVMs,
        count=count,
        names=name_list(names) or None,
        name_prefix=name_prefix,
        cluster=cluster,
        vcpus=vcpus,
        memory_mb=memory_mb,
        image=image,
        node=node,
        tags=list(tags or ()),
        kwargs=kwargs or {},
        disk_gb=disk_gb,
        disks=[{"size_gb": size} for size in disks],
    )
    if not disks:
        del body["disks"]  # a request as servers before data disks know it
    return Call("POST", "/vms", Operation.model_validate, body=body)


def plan_start(
    count: int = 1,
    names: Sequence[str] | None = None,
    name_prefix: str | None = None,
    cluster: str | None = None,
    vcpus: int = 1,
    memory_mb: int = 256,
    image: str = "tiny",
    node: str | None = None,
    kwargs: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    disk_gb: int | None = None,
    disks: Sequence[int] = (),
) -> Call[Plan]:
    """Dry run of :meth:`create_vms`: where the VMs would go; nothing changes."""
    create = create_vms(
        count,
        names,
        name_prefix,
        cluster,
        vcpus,
        memory_mb,
        image,
        node,
        kwargs,
        tags,
        disk_gb,
        disks,
    )
    return Call("POST", "/vms/plan", Plan.model_validate, body=create.body)


def list_vms(
    cluster: str | None = None,
    owner: str | None = None,
    node: str | None = None,
    state: VMState | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    tags: Sequence[str] | None = None,
) -> Call[Page[VM]]:
    """One page of the VMs that match (``tags``: those with every one of them)."""
    params = query(
        cluster=cluster,
        owner=owner,
        node=node,
        state=state,
        limit=limit,
        cursor=cursor,
        tag=list(tags) if tags else None,
    )
    return Call("GET", "/vms", Page[VM].model_validate, params=params)


def iter_vms(
    cluster: str | None = None,
    owner: str | None = None,
    node: str | None = None,
    state: VMState | str | None = None,
    page_size: int | None = None,
    tags: Sequence[str] | None = None,
) -> Paging[VM]:
    """Every matching VM, fetching pages as needed."""
    return lambda cursor: list_vms(cluster, owner, node, state, page_size, cursor, tags)


def get_vm(vm: str) -> Call[VM]:
    """A VM by id or name."""
    return Call("GET", f"/vms/{segment(vm)}", VM.model_validate)


def change_vm(
    vm: str,
    name: str | None = None,
    tags: Sequence[str] | None = None,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
) -> Call[VM]:
    """Rename a VM and/or change its tags (``tags`` replaces them all); see ``VMChange``."""
    body = request_body(
        VMChange,
        name=name,
        tags=None if tags is None else list(tags),
        add_tags=list(add_tags),
        remove_tags=list(remove_tags),
    )
    return Call("PATCH", f"/vms/{segment(vm)}", VM.model_validate, body=body)


def resize_vm(
    vm: str,
    vcpus: int | None = None,
    memory_mb: int | None = None,
    grow: dict[int, int] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Resize a VM: new ``vcpus`` and ``memory_mb`` (it must be stopped) and disks that grow,
    ``grow`` mapping a disk (0: the root disk; N: data disk N) to the GiB it gains; see
    ``ResizeVM``. The answer is the ``resize`` operation."""
    body = request_body(
        ResizeVM,
        vcpus=vcpus,
        memory_mb=memory_mb,
        disks=[{"disk": disk, "grow_gb": gb} for disk, gb in (grow or {}).items()],
        kwargs=kwargs or {},
    )
    return Call("POST", f"/vms/{segment(vm)}/resize", Operation.model_validate, body=body)


def console(vm: str, offset: int = 0) -> Call[ConsoleChunk]:
    """The VM's serial console output from byte ``offset``."""
    path = f"/vms/{segment(vm)}/console"
    return Call("GET", path, ConsoleChunk.model_validate, params={"offset": offset})


def ssh_access(vm: str) -> Call[SSHAccess]:
    """Where and as whom the caller logs into the VM's guest with SSH."""
    return Call("GET", f"/vms/{segment(vm)}/ssh", SSHAccess.model_validate)


# --- operations --------------------------------------------------------------------------


def _op_path(op: str | Operation) -> str:
    return f"/operations/{segment(op if isinstance(op, str) else op.id)}"


def get_operation(op: str | Operation) -> Call[Operation]:
    """An operation as it is now."""
    return Call("GET", _op_path(op), Operation.model_validate)


def cancel(op: str | Operation) -> Call[Operation]:
    """Cancel what can be of an operation (steps not begun; running migrations)."""
    return Call("POST", f"{_op_path(op)}/cancel", Operation.model_validate)


def list_operations(
    status: OpStatus | str | None = None,
    kind: OpKind | str | None = None,
    vm: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Operation]]:
    """Operations, newest first."""
    params = query(status=status, kind=kind, vm=vm, limit=limit, cursor=cursor)
    return Call("GET", "/operations", Page[Operation].model_validate, params=params)


def wait_once(op: str | Operation, timeout: float) -> Call[Operation]:
    """One long poll: the operation once done, or as it is after ``timeout`` seconds.

    The server takes whole seconds, so ``timeout`` is rounded up (to at least one).
    """
    seconds = max(1, math.ceil(timeout))
    return Call(
        "GET",
        f"{_op_path(op)}/wait",
        Operation.model_validate,
        params={"timeout": seconds},
        timeout=httpx.Timeout(seconds + LONG_POLL_SLACK),
    )


def wait(
    op: str | Operation,
    timeout: float | None = None,
    on_progress: ProgressCallback | None = None,
    poll: float = 2.0,
) -> Flow[Operation]:
    """Wait until the operation is done (or ``timeout`` seconds pass) and return it.

    ``on_progress(op)`` is called after every poll, ``poll`` seconds apart at most.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
        current: Operation = yield wait_once(op, remaining)
        if on_progress is not None:
            on_progress(current)
        if current.done or (deadline is not None and time.monotonic() >= deadline):
            return current


# --- nodes -------------------------------------------------------------------------------

_node_list: TypeAdapter[list[Node]] = TypeAdapter(list[Node])


def nodes() -> Call[list[Node]]:
    """Every node."""
    return Call("GET", "/nodes", _node_list.validate_python)


def node(name: str) -> Call[Node]:
    """A node by name."""
    return Call("GET", f"/nodes/{segment(name)}", Node.model_validate)


def drain(name: str) -> Call[Node]:
    """Place no new VMs on the node."""
    return Call("POST", f"/nodes/{segment(name)}/drain", Node.model_validate)


def undrain(name: str) -> Call[Node]:
    """Place new VMs on the node again."""
    return Call("POST", f"/nodes/{segment(name)}/undrain", Node.model_validate)


def evacuate(name: str) -> Call[Operation]:
    """Move every VM off the node (running ones live, stopped ones cold)."""
    return Call("POST", f"/nodes/{segment(name)}/evacuate", Operation.model_validate)


def maintenance(name: str) -> Call[Operation]:
    """Put the node in maintenance (no new VMs) and evacuate it."""
    return Call("POST", f"/nodes/{segment(name)}/maintenance", Operation.model_validate)


def activate(name: str) -> Call[Node]:
    """Return the node from maintenance."""
    return Call("POST", f"/nodes/{segment(name)}/activate", Node.model_validate)


# --- images ------------------------------------------------------------------------------

_image_list: TypeAdapter[list[Image]] = TypeAdapter(list[Image])


def images() -> Call[list[Image]]:
    """The image catalogue."""
    return Call("GET", "/images", _image_list.validate_python)


def image(name: str) -> Call[Image]:
    """An image by name."""
    return Call("GET", f"/images/{segment(name)}", Image.model_validate)


def import_image(
    path: str | Path,
    name: str,
    description: str = "",
    format: str = "auto",
    replace: bool = False,
    progress: Callable[[int], object] | None = None,
    cloud_init: bool = False,
) -> Flow[Image]:
    """Upload the disk image at ``path`` (qcow2 or raw, as ``format`` says; ``auto``: the
    controller tells) into the catalogue as ``name``; ``replace`` swaps out one of that name
    no VM's disk is based on; ``cloud_init``: it runs cloud-init (its VMs get a seed).
    ``progress(bytes sent)`` is called as the upload goes."""
    with open(path, "rb") as file:  # streamed, never read whole into memory
        return (
            yield Call(
                "POST",
                f"/images/{segment(name)}",
                Image.model_validate,
                params=query(
                    description=description or None,
                    format=None if format == "auto" else format,
                    replace="true" if replace else None,
                    cloud_init="true" if cloud_init else None,
                ),
                upload=file if progress is None else CountingReader(file, progress),
                timeout=httpx.Timeout(30.0, read=600.0, write=600.0),
            )
        )


class CountingReader:
    """A file whose reads report how many bytes were read so far."""

    def __init__(self, file: BinaryIO, progress: Callable[[int], object]) -> None:
        self._file = file
        self._progress = progress
        self._read = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._read += len(chunk)
        self._progress(self._read)
        return chunk


def delete_image(name: str) -> Call[None]:
    """Remove an image from the catalogue."""
    return Call("DELETE", f"/images/{segment(name)}", lambda _: None)


# --- events ------------------------------------------------------------------------------


def events(
    name: str | None = None,
    vm: str | None = None,
    node: str | None = None,
    operation: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    newest: bool = False,
) -> Call[Page[Event]]:
    """Recorded events, oldest first (``newest``: newest first); ``since`` is in seconds
    since the epoch."""
    params = query(
        name=name,
        vm=vm,
        node=node,
        operation=operation,
        since=since,
        limit=limit,
        cursor=cursor,
        newest=newest or None,
    )
    return Call("GET", "/events", Page[Event].model_validate, params=params)


def iter_events(
    name: str | None = None,
    vm: str | None = None,
    node: str | None = None,
    operation: str | None = None,
    since: float | None = None,
    page_size: int | None = None,
) -> Paging[Event]:
    """Every matching recorded event, oldest first, fetching pages as needed."""
    return lambda cursor: events(name, vm, node, operation, since, page_size, cursor)


def stream_events(
    name: str | None = None, vm: str | None = None, node: str | None = None
) -> Call[Event]:
    """Events as they happen, until the caller stops iterating or the stream ends."""
    return Call(
        "GET",
        "/events/stream",
        Event.model_validate,  # reads one message's data
        params=query(name=name, vm=vm, node=node),
        timeout=httpx.Timeout(30.0, read=None),  # a quiet stream is not a dead one
    )
