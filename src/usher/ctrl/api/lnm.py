"""``/v1/lnm``: the WebSocket that every LNM dials and keeps open."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.websockets import WebSocketState

from usher import wire
from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow
from usher.ctrl.api.params import RefPath
from usher.ctrl.authz import Forbidden
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.ctrl.link_messages import (
    NODE_MESSAGE,
    Gone,
    Heartbeat,
    Hello,
    Inventory,
    Reply,
    StateReport,
)
from usher.ctrl.linkgate import Place, retry_after_header
from usher.ctrl.nodecreds import NodeRefused
from usher.ctrl.nodes import NodeLink
from usher.model import Capacity, Principal, Strict

router = APIRouter(tags=["lnm"])
log = logging.getLogger("usher.lnm_link")
HELLO_TIMEOUT = 10.0
REFUSALS_LOGGED = 10
"""Refused connections logged (and announced) per address and minute; more are quiet."""
MAX_INVENTORY = 100_000
"""Most VMs one node may report."""
RECONCILE_WAIT = 5.0
"""How long a node's admission waits for its VMs' reconciliation before the next node's
turn (one waiting on a VM's lock behind a long operation does not hold up the others)."""


class NewJoinToken(Strict):
    """Body of ``POST /v1/nodes/join-tokens``."""

    ttl: float = Field(3600.0, gt=0, le=10 * 365 * 86400, description="seconds until it expires")
    uses: int = Field(1, ge=1, le=1_000_000, description="how many nodes may join with it")
    max_capacity: Capacity | None = Field(
        None,
        description="the most each node that joins with it may claim (beyond the "
        "controller's max_node_capacity, which always applies)",
    )


class IssuedJoinToken(BaseModel):
    """A join token; its secret is shown in this answer only."""

    id: str
    token: str
    expires_at: float
    uses: int


class RevokedCredential(BaseModel):
    node: str
    revoked: int = Field(description="how many credentials of the node were revoked")


async def _admin(ctrl: Controller, principal: Principal, action: str) -> None:
    if "admin" not in principal.roles:
        raise Forbidden(f"{principal.name} may not {action}: admins only")
    await allow(ctrl, principal, action)


@router.post("/v1/nodes/join-tokens", status_code=201)
async def create_join_token(
    body: NewJoinToken, ctrl: CtrlDep, principal: PrincipalDep
) -> IssuedJoinToken:
    """Issue a token LNMs join with (admins only)."""
    await _admin(ctrl, principal, "node.join_token")
    join = await ctrl.node_credentials.issue_join_token(body.ttl, body.uses, body.max_capacity)
    log.info("%s issued join token %s (%d use(s))", principal.name, join.id, join.uses)
    return IssuedJoinToken(id=join.id, token=join.token, expires_at=join.expires_at, uses=join.uses)


@router.delete("/v1/nodes/{name}/credential")
async def revoke_credential(
    name: RefPath, ctrl: CtrlDep, principal: PrincipalDep
) -> RevokedCredential:
    """Revoke a node's credential and close its link (admins only)."""
    await _admin(ctrl, principal, "node.revoke")
    revoked = await ctrl.node_credentials.revoke(name)
    if not revoked:
        raise RequestError(404, f"node {name} has no credential to revoke")
    log.warning("%s revoked the credential of node %s", principal.name, name)
    await ctrl.bus.emit("node_revoked", principal=principal.name, node=name)
    link = ctrl.nodes.links.get(name)
    if link is not None:
        await link.close("credential revoked")
    return RevokedCredential(node=name, revoked=revoked)


async def _refuse(ctrl: Controller, ws: WebSocket, node: str | None, reason: str) -> None:
    """Refuse an LNM and close its connection. Each is logged and an event (``node_refused``),
    but at most :data:`REFUSALS_LOGGED` a minute per address: a stranger who keeps trying
    does not grow the log and the event table without bound."""
    address = ws.client.host if ws.client else "?"
    count = ctrl.node_refusals.hit(address)
    if count <= REFUSALS_LOGGED:
        log.warning("refused an LNM (node %s) from %s: %s", node or "?", address, reason)
        await ctrl.bus.emit("node_refused", node=node, data={"reason": reason, "address": address})
    elif count == REFUSALS_LOGGED + 1:
        log.warning("refusing more LNM connections from %s this minute without saying", address)
    with contextlib.suppress(Exception):  # it may be gone already
        await ws.send_json({"type": "refused", "reason": reason})
        await ws.close(code=4001, reason=reason[:120])


async def _receive(ws: WebSocket) -> Any:
    """The next message of ``ws``, parsed; ValueError if it is not a node's message."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    text = message.get("text")
    if text is None:
        raise ValueError("a binary frame")
    return NODE_MESSAGE.validate_python(wire.loads(text))


@router.websocket("/v1/lnm")
async def lnm_link(ws: WebSocket) -> None:
    """An LNM's link: it says hello (with the start of its inventory, the rest following in
    ``inventory`` messages), is welcomed, then sends heartbeats, reports and replies.

    Links are admitted in waves (:mod:`usher.ctrl.linkgate`): beyond what the gate takes,
    the LNM is answered ``503`` with a ``Retry-After`` before the upgrade. A link that
    fails before it is served (the LNM gave up waiting, left mid-handshake) ends quietly."""
    ctrl: Controller = ws.app.state.ctrl
    gate = ctrl.link_gate
    wait = gate.retry_after()
    if wait is not None:
        with contextlib.suppress(Exception):  # it may be gone already
            busy = PlainTextResponse(
                "busy admitting other nodes: come back later",
                status_code=503,
                headers={"Retry-After": retry_after_header(wait)},
            )
            await ws.send_denial_response(busy)
        _UNUPGRADED.expect()
        return
    place = await gate.enter()
    try:
        await _handshake(ctrl, ws, place)
    except (OSError, WebSocketDisconnect, RuntimeError) as exc:
        # the LNM went away before it was served (uvicorn's ClientDisconnected is an OSError;
        # starlette raises RuntimeError for a send on a closed socket)
        log.info("an LNM link ended during its handshake: %r", exc)
        if ws.client_state is WebSocketState.CONNECTING:
            _UNUPGRADED.expect()
    finally:
        place.release()


class _Unupgraded(logging.Filter):
    """Drops uvicorn's error "ASGI callable returned without completing handshake." once
    for each link this route ended before its upgrade on purpose (a ``503``, or an LNM that
    left while it waited): uvicorn says so of every denial response too."""

    MESSAGE = "ASGI callable returned without completing handshake."

    def __init__(self) -> None:
        super().__init__()
        self.expected = 0

    def expect(self) -> None:
        self.expected += 1

    def filter(self, record: logging.LogRecord) -> bool:
        if self.expected and record.getMessage() == self.MESSAGE:
            self.expected -= 1
            return False
        return True


_UNUPGRADED = _Unupgraded()
logging.getLogger("uvicorn.error").addFilter(_UNUPGRADED)


async def _handshake(ctrl: Controller, ws: WebSocket, place: Place) -> None:
    """Accept the link, check the LNM's credential, read its hello and inventory, then serve
    it (:func:`_serve` frees ``place`` once the node is reconciled)."""
    await ws.accept()
    header = ws.headers.get("authorization", "")
    secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    token = await ctrl.node_credentials.known(secret)
    if not secret or token is None:
        why = "unknown credential or join token" if secret else "no credential and no join token"
        await _refuse(ctrl, ws, None, why)
        return
    try:
        hello = await asyncio.wait_for(_receive(ws), HELLO_TIMEOUT)
        if not isinstance(hello, Hello):
            raise ValueError("the first message must be a hello")
    except (TimeoutError, WebSocketDisconnect):
        log.warning("an LNM sent no hello")
        return
    except (ValueError, ValidationError) as exc:
        await _refuse(ctrl, ws, None, f"a malformed hello: {_first_line(exc)}")
        return
    number = ctrl.nodes.observations.stamp()  # what the inventory tells is as of now
    name = hello.node
    try:
        credential = await ctrl.node_credentials.admit(secret, name, token)
    except NodeRefused as exc:
        await _refuse(ctrl, ws, name, str(exc))
        return
    if credential is not None:
        log.info("node %s joined with a join token and got its credential", name)
    try:
        inventory = await _inventory(ws, hello)
    except (TimeoutError, WebSocketDisconnect):
        log.warning("node %s left before its inventory was complete", name)
        return
    except (ValueError, ValidationError) as exc:
        await _refuse(ctrl, ws, name, f"a malformed inventory: {_first_line(exc)}")
        return
    await _serve(ctrl, ws, hello, inventory, number, credential, place)


async def _inventory(ws: WebSocket, hello: Hello) -> list[dict[str, Any]]:
    """Every VM the node reports: the hello's and those of the ``inventory`` messages that
    follow it until one says there is no more."""
    vms = [vm.model_dump(mode="json") for vm in hello.vms]
    more = hello.more
    while more:
        part = await asyncio.wait_for(_receive(ws), HELLO_TIMEOUT)
        if not isinstance(part, Inventory):
            raise ValueError("a hello's inventory must follow it")
        vms += [vm.model_dump(mode="json") for vm in part.vms]
        if len(vms) > MAX_INVENTORY:
            raise ValueError(f"more than {MAX_INVENTORY} VMs")
        more = part.more
    return vms


async def _serve(
    ctrl: Controller,
    ws: WebSocket,
    hello: Hello,
    inventory: list[dict[str, Any]],
    number: int,
    credential: str | None,
    place: Place,
) -> None:
    """Attach the node, welcome it, reconcile its VMs (then free its ``place`` in the wave
    of admissions), then read its messages until the link ends; whatever happens, the node
    is detached when it does."""

    async def send(text: str) -> None:
        await ws.send_text(text)

    name = hello.node
    link = NodeLink(name, send, ws.close, ctrl.nodes.observations)
    cap = ctrl.settings.max_node_capacity
    token_cap = await ctrl.node_credentials.cap_of(name)
    if token_cap is not None:
        cap = Capacity(**{k: min(getattr(cap, k), getattr(token_cap, k)) for k in cap.model_fields})
    await ctrl.nodes.attach(hello, link, cap)
    reason = "connection closed"
    turn: asyncio.Task[None] | None = None
    try:
        welcome: dict[str, Any] = {
            "type": "welcome",
            # three beats per node_timeout: a large cluster sets a longer timeout to cut the
            # heartbeat traffic (1,000 nodes at 1 s are 1,000 messages a second)
            "heartbeat": ctrl.settings.node_timeout / 3,
        }
        if credential is not None:
            welcome["credential"] = credential
        await ws.send_json(welcome)
        reconciling = await ctrl.engine.node_joined(name, inventory, number)
        # the next node's turn once these are through, or have had their time; meanwhile
        # the link is read (a reconciliation may send the node a command and await its reply)
        turn = asyncio.create_task(_free_after(place, reconciling))
        while True:
            try:
                msg = await _receive(ws)
            except (ValueError, ValidationError) as exc:
                _malformed(ctrl, name, exc)
                continue
            await _dispatch(ctrl, link, msg, ctrl.nodes.observations.stamp())
    except WebSocketDisconnect:
        pass
    except Exception as exc:  # the link failed: the node is down, the controller goes on
        reason = f"link error: {exc!r}"
        log.warning("link to node %s failed: %r", name, exc)
    finally:
        if turn is not None:
            turn.cancel()
        await ctrl.node_gone(link, reason)


async def _free_after(place: Place, reconciling: list[asyncio.Future[Any]]) -> None:
    """Free ``place`` once ``reconciling`` is done, or after :data:`RECONCILE_WAIT`."""
    try:
        if reconciling:
            await asyncio.wait(reconciling, timeout=RECONCILE_WAIT)
    finally:
        place.release()


def _malformed(ctrl: Controller, node: str, exc: Exception) -> None:
    """A node sent something that is not a message: it is dropped (logged a few times a
    minute at most), the link goes on."""
    if ctrl.node_refusals.hit(f"malformed:{node}") <= REFUSALS_LOGGED:
        log.warning("node %s sent a malformed message (dropped): %s", node, _first_line(exc))


def _first_line(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:300]


async def _dispatch(ctrl: Controller, link: NodeLink, msg: Any, number: int) -> None:
    if isinstance(msg, Reply):
        link.on_reply(msg.model_dump(), number)
    elif isinstance(msg, Heartbeat):
        await ctrl.nodes.heartbeat(link.name, msg.usage)
    elif isinstance(msg, StateReport):
        ctrl.engine.report_later(
            ctrl.engine.vm_reported(link.name, msg.vm_id, msg.state, msg.reason, number),
            f"report-{msg.vm_id}",
        )
    elif isinstance(msg, Gone):
        ctrl.engine.report_later(
            ctrl.engine.vm_gone(link.name, msg.vm_id, number), f"gone-{msg.vm_id}"
        )
    else:
        _malformed(ctrl, link.name, ValueError(f"a {msg.type} message after the hello"))
