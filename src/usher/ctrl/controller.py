"""The controller: wires the store, event bus, plugins, node registry and engine together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from usher.ctrl.config import ADMIN_TOKEN_FILE, Settings
from usher.ctrl.consoles import ConsoleHub
from usher.ctrl.context import PluginContext
from usher.ctrl.engine import Engine, RequestError
from usher.ctrl.events import EventBus
from usher.ctrl.linkgate import LinkGate
from usher.ctrl.metrics import Metrics
from usher.ctrl.nodecreds import ROLES as NODE_ROLES
from usher.ctrl.nodecreds import NodeCredentials
from usher.ctrl.nodes import NodeLink, NodeRegistry
from usher.ctrl.plugins import PluginError, PluginHost
from usher.ctrl.ratelimit import Window
from usher.ctrl.statelock import StateLock
from usher.ctrl.store import Store
from usher.ctrl.tokens import issue_token
from usher.ctrl.usage import UsageHistory
from usher.model import Principal

log = logging.getLogger("usher.ctrl")
NODE_ROLE = NODE_ROLES[0]


def write_secret(path: Path, secret: str) -> None:
    """Write a secret to a file only its owner (root) can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)


def _private(state_dir: Path) -> None:
    """The state dir and what is in it for the controller's owner alone (a state dir an
    older release left readable is tightened too)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    for path in state_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


class Controller:
    def __init__(self, settings: Settings, extra_plugins: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.store = Store(settings.db_url)
        self.bus = EventBus()
        self.ctx = PluginContext(store=self.store, bus=self.bus, settings=settings)
        self.plugins = PluginHost(
            self.ctx, self.bus, timeout=settings.notify_timeout, hook_timeout=settings.hook_timeout
        )
        self.nodes = NodeRegistry(self.store, self.bus, settings.node_timeout)
        self.node_credentials = NodeCredentials(self.store)
        self.engine = Engine(settings, self.store, self.bus, self.plugins, self.nodes)
        self.consoles = ConsoleHub(self.store, self.nodes)
        self.plugins.load(settings.plugins.enabled, extra_plugins or {})
        observe = settings.plugins.table("metrics")  # dashboard and /metrics settings
        self.usage = UsageHistory(self.store, self.nodes, observe)
        self.metrics = Metrics(self, public=bool(observe.get("public", False)))
        self._watcher: asyncio.Task[None] | None = None
        self._rejoin: asyncio.Task[None] | None = None
        self.first_admin_token: str | None = None
        self.node_refusals = Window(limit=100)  # refused and malformed node messages
        self.link_gate = LinkGate(settings.link_admissions, settings.link_wait)  # in waves
        self.state_lock = StateLock(settings.state_dir, "a controller")

    async def start(self) -> None:
        _private(self.settings.state_dir)
        self.state_lock.acquire()  # one controller on a state dir; none during a restore
        quarantined = await self.store.open()
        await self.metrics.start()
        were_up = await self.nodes.load()
        configs = {name: self.settings.plugins.table(name) for name in self.plugins.order}
        await self.plugins.start(configs)
        await self._bootstrap_admin_token()
        await self.engine.recover()
        self._watcher = asyncio.create_task(self.nodes.watch_heartbeats(self.node_silent))
        self._rejoin = asyncio.create_task(self._missing_after_restart(were_up))
        self.usage.start()
        await self.bus.emit(
            "ctrl_start", data={"listen": self.settings.listen, "plugins": self.plugins.order}
        )
        for record in quarantined:
            await self.bus.emit(
                "record_quarantined",
                data={"table": record.table, "key": record.key, "error": record.error},
            )

    async def _missing_after_restart(self, were_up: list[str]) -> None:
        """Nodes that were up when the controller stopped and have not dialled again within
        ``rejoin_grace`` seconds are lost, as if they had gone silent: their VMs are marked
        lost (and HA may restart them). Otherwise a node that died while the controller
        was down would keep its VMs ``running`` for as long as it stays away."""
        grace = self.settings.rejoin_grace
        await asyncio.sleep(grace)
        self.engine.reconciler.after_restore.end()  # no adoption after the nodes' rejoin
        for name in were_up:
            reason = f"did not dial again within {grace:g} s of the controller's start"
            if await self.nodes.declare_lost(name, reason):
                log.warning("node %s %s: declared lost", name, reason)
                await self.engine.node_lost(name, reason)

    async def stop(self) -> None:
        await self.consoles.close()
        await self.usage.stop()
        for task in (self._watcher, self._rejoin):
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.nodes.links.values()):
            await link.close("controller stopping")
        await self.engine.close()
        await self.plugins.stop()
        await self.metrics.stop()
        await self.store.close()
        self.state_lock.release()

    async def _bootstrap_admin_token(self) -> None:
        """At first start: an admin token, written to a file only (never to the log)."""
        if await self.store.tokens_with_role("admin"):
            return
        secret = await issue_token(
            self.store, "admin", ["admin"], description="created at first start"
        )
        path = self.settings.state_dir / ADMIN_TOKEN_FILE
        write_secret(path, secret)
        self.first_admin_token = secret
        log.warning("created the admin token; it is in %s (mode 0600)", path)

    async def authenticate(self, token: str | None) -> Principal:
        """The principal a bearer token belongs to, or a RequestError: 401 for no token or
        one no ``authenticate`` hook knows, 403 for a node's credential (it works on the
        node link only)."""
        if not token:
            raise RequestError(
                401,
                "missing token: send 'Authorization: Bearer <token>' (the "
                "admin token is in the controller's state dir, admin.token)",
            )
        try:
            principal = await self.plugins.decide("authenticate", token=token)
        except PluginError as exc:
            raise RequestError(401, f"authentication failed: {exc}") from exc
        if principal is None:
            raise RequestError(401, "invalid, expired or revoked token")
        if NODE_ROLE in principal.roles:
            raise RequestError(403, "a node credential works on the node link only")
        return principal

    async def node_silent(self, link: NodeLink) -> None:
        await self.node_gone(link, "missed heartbeats")

    async def node_gone(self, link: NodeLink, reason: str) -> None:
        if await self.nodes.detach(link, reason):
            await self.engine.node_lost(link.name, reason)
