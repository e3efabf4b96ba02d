"""Requests and answers of the Usher REST API (docs/api.md), shared by both clients.

Nothing here does I/O. Each API call is described by a :class:`Call`: what to send and how to
read the answer. :func:`decode` turns an httpx response into a model or an
:class:`~usher.client.errors.UsherError`. Calls that take several round trips (waiting on an
operation) are *flows*: generators that yield calls and are sent back the decoded answers.
:class:`~usher.client.sync.Client` and :class:`~usher.client.async_.AsyncClient` only send
calls and drive flows, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import math
import ssl
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import ServerSentEvent
from pydantic import TypeAdapter, ValidationError

from usher.client.config import Settings
from usher.client.errors import UsherConnectionError, UsherError
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
    VMAction,
    VMState,
)

T = TypeVar("T")
R = TypeVar("R")

#: A multi-request exchange: yields calls, is sent each decoded answer, returns its result.
Flow = Generator["Call[Any]", Any, R]

#: Called with the operation after every poll while waiting on it.
ProgressCallback = Callable[[Operation], object]

#: Extra seconds the HTTP read timeout allows beyond a long-poll's server-side timeout.
LONG_POLL_SLACK = 30.0

USER_AGENT = "usher-client"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request to ``/v1`` and the function that reads its JSON answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    timeout: httpx.Timeout | None = None
    content: Any = None  # raw request body (an uploaded file), instead of JSON ``body``

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request``/``stream`` (and their async twins)."""
        args: dict[str, Any] = {"method": self.method, "url": self.path, "params": self.params}
        if self.body is not None:
            args["json"] = self.body
        if self.content is not None:
            args["content"] = self.content
            args["headers"] = {"Content-Type": "application/octet-stream"}
        if self.timeout is not None:
            args["timeout"] = self.timeout
        return args


def http_options(settings: Settings, timeout: float) -> dict[str, Any]:
    """Keyword arguments for the httpx client both Usher clients wrap."""
    headers = {"User-Agent": USER_AGENT}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    options: dict[str, Any] = {
        "base_url": f"{settings.url}/v1",
        "headers": headers,
        "timeout": timeout,
    }
    if settings.ca_file:
        try:
            options["verify"] = ssl.create_default_context(cafile=settings.ca_file)
        except OSError as exc:
            raise UsherError(None, f"cannot read the CA file {settings.ca_file}: {exc}") from exc
    return options


# --- answers -----------------------------------------------------------------------------


def decode(call: Call[T], response: httpx.Response) -> T:
    """The answer to ``call`` as a model; raises :class:`UsherError` for any non-2xx answer."""
    check(response)
    try:
        return call.parse(orjson.loads(response.content) if response.content else None)
    except ValueError as exc:  # bad JSON or a pydantic ValidationError
        raise UsherError(
            response.status_code,
            f"unexpected answer from the controller to {call.method} {call.path}: {exc}",
        ) from exc


def check(response: httpx.Response) -> None:
    """Raise the :class:`UsherError` a non-2xx response stands for (its body must be read)."""
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        raise UsherError(response.status_code, body["error"], body.get("detail"))
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        raise UsherError(response.status_code, body["detail"])
    message = f"HTTP {response.status_code} {response.reason_phrase}"
    if text := response.text.strip()[:200]:
        message += f": {text}"
    raise UsherError(response.status_code, message, body)


def transport_error(exc: httpx.TransportError, url: str) -> UsherConnectionError:
    """A clear error for a request that got no (complete) answer from ``url``."""
    if isinstance(exc, httpx.ConnectError):
        return UsherConnectionError(
            f"cannot reach the controller at {url} ({exc}); is it running, and is the URL right?"
        )
    if isinstance(exc, httpx.TimeoutException):
        return UsherConnectionError(f"the controller at {url} did not answer in time")
    return UsherConnectionError(f"lost the connection to the controller at {url} ({exc})")


def invalid_request(exc: ValidationError) -> UsherError:
    """A request the client already knows the server would refuse, worded as its ``422``."""
    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    fields = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'body'}: {err['msg']}" for err in detail
    )
    return UsherError(422, f"invalid request: {fields}", detail)


# --- calls -------------------------------------------------------------------------------


def _query(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _segment(value: str) -> str:
    return quote(value, safe="")


def _names(vms: Sequence[str] | None) -> list[str]:
    if vms is None:
        return []
    return [vms] if isinstance(vms, str) else list(vms)


def op_id(op: str | Operation) -> str:
    return op if isinstance(op, str) else op.id


def raw(
    method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None
) -> Call[Any]:
    """Any call under ``/v1`` answering JSON, e.g. a route a plugin added."""
    return Call(method, path, lambda answer: answer, params=_query(**(params or {})), body=body)


def whoami() -> Call[Principal]:
    return Call("GET", "/whoami", Principal.model_validate)


def create_vms(
    *,
    count: int,
    names: Sequence[str] | None,
    name_prefix: str | None,
    cluster: str | None,
    vcpus: int,
    memory_mb: int,
    image: str,
    node: str | None,
    kwargs: dict[str, Any] | None,
) -> Call[Operation]:
    body = _body(
        CreateVMs,
        count=count,
        names=_names(names) or None,
        name_prefix=name_prefix,
        cluster=cluster,
        vcpus=vcpus,
        memory_mb=memory_mb,
        image=image,
        node=node,
        kwargs=kwargs or {},
    )
    return Call("POST", "/vms", Operation.model_validate, body=body)


def plan_start(**fields: Any) -> Call[Plan]:
    """Dry run of ``create_vms`` (same arguments): where the VMs would go."""
    call = create_vms(**fields)
    return Call("POST", "/vms/plan", Plan.model_validate, body=call.body)


def plan_migrate(
    *,
    vms: Sequence[str] | None,
    cluster: str | None,
    target_node: str | None,
    kwargs: dict[str, Any] | None,
) -> Call[Plan]:
    """Dry run of a migration: where each VM would go."""
    call = action(OpKind.MIGRATE, vms=vms, cluster=cluster, target_node=target_node, kwargs=kwargs)
    return Call("POST", "/vms/actions/migrate/plan", Plan.model_validate, body=call.body)


def list_vms(
    *,
    cluster: str | None = None,
    owner: str | None = None,
    node: str | None = None,
    state: VMState | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[VM]]:
    params = _query(
        cluster=cluster, owner=owner, node=node, state=state, limit=limit, cursor=cursor
    )
    return Call("GET", "/vms", Page[VM].model_validate, params=params)


def get_vm(vm: str) -> Call[VM]:
    return Call("GET", f"/vms/{_segment(vm)}", VM.model_validate)


def action(
    kind: OpKind | str,
    *,
    vms: Sequence[str] | None,
    cluster: str | None,
    target_node: str | None,
    kwargs: dict[str, Any] | None,
) -> Call[Operation]:
    try:
        kind = OpKind(kind)
    except ValueError:
        known = ", ".join(OpKind)
        raise UsherError(400, f"unknown action {kind!r}; use one of {known}") from None
    body = _body(
        VMAction, vms=_names(vms), cluster=cluster, target_node=target_node, kwargs=kwargs or {}
    )
    return Call("POST", f"/vms/actions/{kind.value}", Operation.model_validate, body=body)


def get_operation(op: str | Operation) -> Call[Operation]:
    return Call("GET", f"/operations/{_segment(op_id(op))}", Operation.model_validate)


def list_operations(
    *,
    status: OpStatus | str | None = None,
    kind: OpKind | str | None = None,
    vm: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Operation]]:
    params = _query(status=status, kind=kind, vm=vm, limit=limit, cursor=cursor)
    return Call("GET", "/operations", Page[Operation].model_validate, params=params)


def cancel(op: str | Operation) -> Call[Operation]:
    return Call("POST", f"/operations/{_segment(op_id(op))}/cancel", Operation.model_validate)


def wait_once(op: str | Operation, timeout: float) -> Call[Operation]:
    """One long poll: the operation once done, or as it is after ``timeout`` seconds.

    The server takes whole seconds, so ``timeout`` is rounded up (to at least one).
    """
    seconds = max(1, math.ceil(timeout))
    return Call(
        "GET",
        f"/operations/{_segment(op_id(op))}/wait",
        Operation.model_validate,
        params={"timeout": seconds},
        timeout=httpx.Timeout(seconds + LONG_POLL_SLACK),
    )


def wait(
    op: str | Operation,
    *,
    timeout: float | None,
    on_progress: ProgressCallback | None,
    poll: float,
) -> Flow[Operation]:
    """Long-poll an operation, ``poll`` seconds at a time, until it is done or ``timeout``.

    Returns the final operation, or the operation as it is when ``timeout`` runs out.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = poll if deadline is None else min(poll, deadline - time.monotonic())
        current: Operation = yield wait_once(op, remaining)
        if on_progress is not None:
            on_progress(current)
        if current.done or (deadline is not None and time.monotonic() >= deadline):
            return current


_node_list = TypeAdapter(list[Node])


def nodes() -> Call[list[Node]]:
    return Call("GET", "/nodes", _node_list.validate_python)


def node(name: str) -> Call[Node]:
    return Call("GET", f"/nodes/{_segment(name)}", Node.model_validate)


def drain(name: str) -> Call[Node]:
    return Call("POST", f"/nodes/{_segment(name)}/drain", Node.model_validate)


def undrain(name: str) -> Call[Node]:
    return Call("POST", f"/nodes/{_segment(name)}/undrain", Node.model_validate)


def evacuate(name: str) -> Call[Operation]:
    return Call("POST", f"/nodes/{_segment(name)}/evacuate", Operation.model_validate)


def maintenance(name: str) -> Call[Operation]:
    return Call("POST", f"/nodes/{_segment(name)}/maintenance", Operation.model_validate)


def activate(name: str) -> Call[Node]:
    return Call("POST", f"/nodes/{_segment(name)}/activate", Node.model_validate)


def events(
    *,
    name: str | None = None,
    vm: str | None = None,
    node: str | None = None,
    operation: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Event]]:
    params = _query(
        name=name, vm=vm, node=node, operation=operation, since=since, limit=limit, cursor=cursor
    )
    return Call("GET", "/events", Page[Event].model_validate, params=params)


def event_stream(
    *, name: str | None = None, vm: str | None = None, node: str | None = None
) -> Call[Event]:
    """The SSE stream of events; ``parse`` reads one message's data. Reads never time out."""
    return Call(
        "GET",
        "/events/stream",
        Event.model_validate,
        params=_query(name=name, vm=vm, node=node),
        timeout=httpx.Timeout(30.0, read=None),
    )


def console(vm: str, offset: int = 0) -> Call[ConsoleChunk]:
    return Call(
        "GET",
        f"/vms/{_segment(vm)}/console",
        ConsoleChunk.model_validate,
        params={"offset": offset},
    )


_image_list = TypeAdapter(list[Image])


def images() -> Call[list[Image]]:
    return Call("GET", "/images", _image_list.validate_python)


def image(name: str) -> Call[Image]:
    return Call("GET", f"/images/{_segment(name)}", Image.model_validate)


def import_image(name: str, content: Any, description: str = "") -> Call[Image]:
    """Upload a qcow2 file (bytes or an iterator of chunks) as image ``name``."""
    return Call(
        "POST",
        f"/images/{_segment(name)}",
        Image.model_validate,
        params=_query(description=description or None),
        content=content,
        timeout=httpx.Timeout(30.0, read=600.0, write=600.0),
    )


def delete_image(name: str) -> Call[None]:
    return Call("DELETE", f"/images/{_segment(name)}", lambda _: None)


def decode_sse(call: Call[T], sse: ServerSentEvent) -> T | None:
    """The event carried by one SSE message, or ``None`` for a message without data."""
    if not sse.data:
        return None
    try:
        return call.parse(json.loads(sse.data))
    except ValueError as exc:
        raise UsherError(None, f"unexpected event from the controller: {exc}") from exc


def _body(model: type[CreateVMs | VMAction], **fields: Any) -> dict[str, Any]:
    """A request body, validated here so that mistakes are caught before anything is sent."""
    try:
        return model(**fields).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise invalid_request(exc) from None
