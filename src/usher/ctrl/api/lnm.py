"""``/v1/lnm``: the WebSocket that every LNM dials and keeps open."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from usher.ctrl.api.deps import authenticate_token
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError
from usher.ctrl.nodes import NodeLink
from usher.model import NAME_PATTERN, VMState

router = APIRouter(tags=["lnm"])
log = logging.getLogger("usher.lnm_link")
HELLO_TIMEOUT = 10.0


async def _refuse(ws: WebSocket, reason: str) -> None:
    log.warning("refused an LNM from %s: %s", ws.client.host if ws.client else "?", reason)
    await ws.send_json({"type": "refused", "reason": reason})
    await ws.close(code=4001, reason=reason[:120])


@router.websocket("/v1/lnm")
async def lnm_link(ws: WebSocket) -> None:
    ctrl: Controller = ws.app.state.ctrl
    await ws.accept()
    header = ws.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else None
    try:
        principal = await authenticate_token(ctrl, token)
    except RequestError as exc:
        await _refuse(ws, exc.message)
        return
    if "node" not in principal.roles:
        await _refuse(ws, "this token is not a node credential")
        return
    hello = await ws.receive_json()
    name = str(hello.get("node", ""))

    if hello.get("type") != "hello" or not re.match(NAME_PATTERN, name):
        await _refuse(ws, "the first message must be a hello with a valid node name")
        return

    link = NodeLink(name, ws.send_json, ws.close)
    await ctrl.nodes.attach(hello, link)
    await ws.send_json({"type": "welcome", "heartbeat": min(1.0, ctrl.settings.node_timeout / 3)})
    await ctrl.engine.node_joined(name, hello.get("vms") or [])
    reason = "connection closed"
    try:
        while True:
            msg: dict[str, Any] = json.loads(await ws.receive_text())
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
    else:
        log.warning("node %s sent an unknown message type %r", link.name, kind)
