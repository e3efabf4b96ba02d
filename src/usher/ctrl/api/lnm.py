"""``/v1/lnm``: the WebSocket that every LNM dials and keeps open."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field

from usher import wire
from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow
from usher.ctrl.authz import Forbidden
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.ctrl.nodecreds import NodeRefused
from usher.ctrl.nodes import NodeLink
from usher.model import NAME_PATTERN, Principal, Strict, VMState

router = APIRouter(tags=["lnm"])
log = logging.getLogger("usher.lnm_link")
HELLO_TIMEOUT = 10.0


class NewJoinToken(Strict):
    """Body of ``POST /v1/nodes/join-tokens``."""

    ttl: float = Field(3600.0, gt=0, description="seconds until the join token expires")
    uses: int = Field(1, ge=1, description="how many nodes may join with it")


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
    join = await ctrl.node_credentials.issue_join_token(body.ttl, body.uses)
    log.info("%s issued join token %s (%d use(s))", principal.name, join.id, join.uses)
    return IssuedJoinToken(id=join.id, token=join.token, expires_at=join.expires_at, uses=join.uses)


@router.delete("/v1/nodes/{name}/credential")
async def revoke_credential(name: str, ctrl: CtrlDep, principal: PrincipalDep) -> RevokedCredential:
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
    address = ws.client.host if ws.client else None
    log.warning("refused an LNM (node %s) from %s: %s", node or "?", address or "?", reason)
    await ctrl.bus.emit("node_refused", node=node, data={"reason": reason, "address": address})
    await ws.send_json({"type": "refused", "reason": reason})
    await ws.close(code=4001, reason=reason[:120])


@router.websocket("/v1/lnm")
async def lnm_link(ws: WebSocket) -> None:
    ctrl: Controller = ws.app.state.ctrl
    await ws.accept()
    header = ws.headers.get("authorization", "")
    secret = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    try:
        hello = await asyncio.wait_for(ws.receive_json(), HELLO_TIMEOUT)
    except (TimeoutError, WebSocketDisconnect, ValueError):
        log.warning("an LNM sent no hello")
        return
    name = str(hello.get("node", ""))
    if hello.get("type") != "hello" or not re.match(NAME_PATTERN, name):
        await _refuse(ctrl, ws, None, "the first message must be a hello with a valid node name")
        return
    try:
        credential = await ctrl.node_credentials.admit(secret, name)
    except NodeRefused as exc:
        await _refuse(ctrl, ws, name, str(exc))
        return
    if credential is not None:
        log.info("node %s joined with a join token and got its credential", name)

    link = NodeLink(name, lambda message: ws.send_text(wire.dumps(message)), ws.close)
    await ctrl.nodes.attach(hello, link)
    welcome: dict[str, Any] = {
        "type": "welcome",
        # three beats per node_timeout: a large cluster sets a longer timeout to cut the
        # heartbeat traffic (1,000 nodes at 1 s are 1,000 messages a second)
        "heartbeat": ctrl.settings.node_timeout / 3,
    }
    if credential is not None:
        welcome["credential"] = credential
    await ws.send_json(welcome)
    await ctrl.engine.node_joined(name, hello.get("vms") or [])
    reason = "connection closed"
    try:
        while True:
            msg: dict[str, Any] = wire.loads(await ws.receive_text())
            await _dispatch(ctrl, link, msg)
    except WebSocketDisconnect:
        pass
    except Exception as exc:  # a broken message must not take the controller down
        reason = f"link error: {exc!r}"
        log.exception("link to node %s failed", name)
    finally:
        await ctrl.node_gone(link, reason)


async def _dispatch(ctrl: Controller, link: NodeLink, msg: dict[str, Any]) -> None:
    kind = msg.get("type")
    if kind == "reply":
        link.on_reply(msg)
    elif kind == "heartbeat":
        await ctrl.nodes.heartbeat(link.name, msg.get("usage"))
    elif kind == "state":
        vm_id, state = str(msg["vm_id"]), VMState(msg["state"])
        ctrl.engine.report_later(
            ctrl.engine.vm_reported(link.name, vm_id, state, msg.get("reason")),
            f"report-{vm_id}",
        )
    elif kind == "gone":
        vm_id = str(msg["vm_id"])
        ctrl.engine.report_later(ctrl.engine.vm_gone(link.name, vm_id), f"gone-{vm_id}")
    else:
        log.warning("node %s sent an unknown message type %r", link.name, kind)
