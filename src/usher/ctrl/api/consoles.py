"""``/v1/vms/{vm}/console/attach``: a VM's serial console, read-write, over a WebSocket.

**Authentication.** As every API call, with a token: in the ``Authorization: Bearer`` header
(``ush``), or, where a client cannot set headers on a WebSocket (a browser), in the
``Sec-WebSocket-Protocol`` header, as the subprotocol ``usher.auth.<token in base64url>``
offered beside ``usher.console.v1``. The server answers with ``usher.console.v1`` only, never
echoing the token; the token never goes into the URL (which logs and proxies keep). A page of
another origin cannot attach for a user: it has no token to offer (no cookie authenticates).

**Authorization.** The action ``vm.console.attach`` on the VM (the read-only console is
``vm.console``); a VM the caller may not see is unknown (``4404``), as elsewhere. It is asked
again every :data:`RECHECK_SECONDS` while the session lasts: a revoked token or a member
taken off the VM's cluster ends it (``4401``, ``4403``, ``4404``).

**Messages.** The client sends what is typed, as binary frames (or text frames, taken as
UTF-8), each at most :data:`usher.ctrl.consoles.MAX_INPUT` bytes. The server sends console
output as text frames: first the last few KiB already written, then whatever comes. When input
cannot be delivered (the VM is stopped, its driver takes none) a notice in brackets comes as
output instead. Either side ends the session by closing the WebSocket; the server closes with
a code that says why: ``1000`` after the client left, ``1009`` an input frame too large,
``4401`` no valid token, ``4403`` not allowed, ``4404`` unknown or destroyed VM, ``4409`` no
console there, ``4408`` the client did not read its output (1 MiB waiting), ``4503`` the
VM's node is gone, ``1013`` too many consoles attached, ``1001`` the controller stops.

**Audit.** ``console_attach`` when a session starts, ``console_detach`` when it ends (how long,
how many bytes were typed, why it ended; never what was typed), ``console_refused`` for an
attach that was not allowed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from usher.ctrl.api.deps import allow, visible_vm
from usher.ctrl.api.params import RefPath
from usher.ctrl.authz import Forbidden
from usher.ctrl.consoles import (
    DETACHED,
    MAX_INPUT,
    NO_CONSOLE,
    TOO_BIG,
    TOO_SLOW,
    ConsoleEnded,
    Feed,
    InputRefused,
    Session,
)
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.model import VM, Capability, Principal, new_id

router = APIRouter()
FLUSH_TIMEOUT = 2.0
"""Seconds the output that came before a session's end may take to reach its client."""
RECHECK_SECONDS = 5.0
"""How often an attached session's right to its console is asked again."""
SUBPROTOCOL = "usher.console.v1"
TOKEN_PROTOCOL = "usher.auth."
"""Prefix of the subprotocol that carries a browser's token (base64url, no padding)."""


def _token(ws: WebSocket) -> str | None:
    """The token of the ``Authorization`` header or of an ``usher.auth.`` subprotocol."""
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for offered in ws.scope.get("subprotocols") or []:
        if offered.startswith(TOKEN_PROTOCOL):
            encoded = offered.removeprefix(TOKEN_PROTOCOL)
            with contextlib.suppress(binascii.Error, ValueError):
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    return None


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Close ``ws`` with ``code`` and ``reason`` (cut to what a close frame carries)."""
    if ws.application_state is WebSocketState.DISCONNECTED:
        return
    text = reason.encode()[:120].decode(errors="ignore")
    with contextlib.suppress(Exception):  # the client may be gone already
        await ws.close(code=code, reason=text)


@router.websocket("/v1/vms/{vm}/console/attach")
async def attach_console(ws: WebSocket, vm: RefPath) -> None:
    """A read-write console on ``vm`` until either side leaves (module doc)."""
    ctrl: Controller = ws.app.state.ctrl
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    address = ws.client.host if ws.client else None
    try:
        principal = await ctrl.authenticate(_token(ws))
    except RequestError as exc:
        await _close(ws, 4000 + exc.status, exc.message)
        return
    try:
        found = await visible_vm(ctrl, principal, vm)
        await allow(ctrl, principal, "vm.console.attach", vms=[found.model_dump(mode="json")])
        writable = await _writable(ctrl, found)
        feed, session = ctrl.consoles.attach(found, principal.name)
    except (RequestError, Forbidden, ConsoleEnded) as exc:
        code, reason = _refusal(exc)
        await ctrl.bus.emit(
            "console_refused",
            principal=principal.name,
            data={"vm": vm, "client_address": address, "code": code, "error": reason},
        )
        await _close(ws, code, reason)
        return
    recheck = asyncio.create_task(_while_allowed(ctrl, _token(ws), found.id, session))
    try:
        await _attached(ctrl, ws, principal, found, feed, session, writable, address)
    finally:
        recheck.cancel()


async def _while_allowed(ctrl: Controller, token: str | None, vm_id: str, session: Session) -> None:
    """Every :data:`RECHECK_SECONDS`, ask again whether the session's token may attach to
    its VM: a revoked token, or a member removed from the VM's cluster, ends the session
    (``4401``, ``4403`` or ``4404``). A VM that is gone is left to its feed to end."""
    while session.ended is None:
        await asyncio.sleep(RECHECK_SECONDS)
        try:
            principal = await ctrl.authenticate(token)
            if await ctrl.store.get_vm(vm_id) is None:
                continue  # destroyed: its feed says so
            found = await visible_vm(ctrl, principal, vm_id)
            await allow(ctrl, principal, "vm.console.attach", vms=[found.model_dump(mode="json")])
        except (RequestError, Forbidden) as exc:
            code, reason = _refusal(exc)
            session.end(ConsoleEnded(code, f"no longer allowed: {reason}"))


def _refusal(exc: RequestError | Forbidden | ConsoleEnded) -> tuple[int, str]:
    if isinstance(exc, RequestError):
        return 4000 + exc.status, exc.message
    if isinstance(exc, Forbidden):
        return 4403, str(exc)
    return exc.code, exc.reason


async def _writable(ctrl: Controller, vm: VM) -> bool:
    """Whether ``vm``'s node takes console input; :class:`ConsoleEnded` if it has no
    console at all. A node that declares no capabilities is taken to have them all."""
    node = await ctrl.store.get_node(vm.node) if vm.node else None
    if node is None:
        raise ConsoleEnded(NO_CONSOLE, f"VM {vm.name} is on no node")
    declared = set(node.capabilities)
    if declared and Capability.CONSOLE.value not in declared:
        raise ConsoleEnded(NO_CONSOLE, f"node {node.name}'s driver has no console")
    return not declared or Capability.CONSOLE_INPUT.value in declared


async def _attached(
    ctrl: Controller,
    ws: WebSocket,
    principal: Principal,
    vm: VM,
    feed: Feed,
    session: Session,
    writable: bool,
    address: str | None,
) -> None:
    """Serve an attached session, audited from start to end."""
    session_id = new_id("con")
    started = time.monotonic()
    envelope = {"principal": principal.name, "vm_id": vm.id, "node": vm.node}
    ended = ConsoleEnded(DETACHED, "the client detached")
    try:
        await ctrl.bus.emit(
            "console_attach",
            **envelope,
            data={"session": session_id, "client_address": address, "read_only": not writable},
        )
        if not writable:
            session.offer(f"\r\n[usher: node {vm.node}'s driver takes no console input]\r\n")
        ended = await _serve(ws, feed, session, writable)
    finally:
        ctrl.consoles.detach(feed, session)
        await _close(ws, ended.code, ended.reason)
        await ctrl.bus.emit(
            "console_detach",
            **envelope,
            data={
                "session": session_id,
                "seconds": round(time.monotonic() - started, 3),
                "bytes_typed": session.bytes_typed,
                "code": ended.code,
                "reason": ended.reason,
            },
        )


async def _serve(ws: WebSocket, feed: Feed, session: Session, writable: bool) -> ConsoleEnded:
    """Pass output to the client and its input to the VM until the session ends: the client
    leaves, sends too much, or the feed ends it; how it ended."""
    tasks = [
        asyncio.create_task(_send_output(ws, session)),
        asyncio.create_task(_take_input(ws, feed, session, writable)),
        asyncio.create_task(session.done.wait()),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if session.ended is not None and session.ended.code not in (DETACHED, TOO_SLOW):
        with contextlib.suppress(Exception, TimeoutError):  # what came before the end
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await _send_output(ws, session, until_empty=True)
    return session.ended or ConsoleEnded(DETACHED, "the client detached")


async def _send_output(ws: WebSocket, session: Session, *, until_empty: bool = False) -> None:
    """Send the client its output as it comes (or, ``until_empty``, what waits); a client
    that is gone ends the session."""
    while not until_empty or session.has_output:
        text = await session.take()
        try:
            await ws.send_text(text)
        except Exception:  # the client is gone
            session.end(ConsoleEnded(DETACHED, "the client went away"))
            return


async def _take_input(ws: WebSocket, feed: Feed, session: Session, writable: bool) -> None:
    """Type what the client sends into the VM until it leaves or sends too much."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            session.end(ConsoleEnded(DETACHED, "the client detached"))
            return
        data = message.get("bytes")
        if data is None:
            data = str(message.get("text") or "").encode()
        if len(data) > MAX_INPUT:
            session.end(ConsoleEnded(TOO_BIG, f"input frames are at most {MAX_INPUT} bytes"))
            return
        if not data or not writable:
            continue
        try:
            await feed.write(data)
        except InputRefused as exc:
            session.offer(f"\r\n[usher: input not delivered: {exc}]\r\n")
            continue
        except ConsoleEnded as ended:
            session.end(ended)
            return
        session.bytes_typed += len(data)
