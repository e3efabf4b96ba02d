"""What a plugin may use of the controller: the public face handed to ``usher_configure``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from usher.ctrl.config import Settings
    from usher.ctrl.engine import Engine
    from usher.ctrl.events import EventBus
    from usher.ctrl.store import PluginData, Store
    from usher.model import Event, Operation, OpKind

T = TypeVar("T")


@dataclass
class PluginContext:
    """Handed to every plugin at start: the store, the event bus and the settings."""

    store: Store
    bus: EventBus
    settings: Settings
    _engine: Engine | None = field(default=None, init=False, repr=False)

    def attach(self, engine: Engine) -> None:
        """Called once by the engine it fronts."""
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the operation engine is not running")
        return self._engine

    def logger(self, plugin: str) -> logging.Logger:
        return logging.getLogger(f"usher.plugin.{plugin}")

    async def emit(self, name: str, **fields: Any) -> Event:
        """Fire an event of the plugin's own (it reaches the stream and other plugins)."""
        return await self.bus.emit(name, **fields)

    async def get(self, plugin: str, key: str, default: Any = None) -> Any:
        """Read a value a plugin stored under ``key``."""
        return await self.store.plugin_get(plugin, key, default)

    async def put(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON value for a plugin; it survives controller restarts."""
        await self.store.plugin_set(plugin, key, value)

    async def atomically(self, plugin: str, change: Callable[[PluginData], Awaitable[T]]) -> T:
        """Read-modify-write of a plugin's values, atomic in the database: ``change`` gets an
        object with ``await get(key, default)`` and ``await put(key, value)``; two changes at
        once behave as one after the other (on SQLite and PostgreSQL). It may run again if
        a concurrent change got in first; an exception from it changes nothing. Use it for
        every check-then-act (a membership, an owner, a counter)."""
        return await self.store.plugin_atomically(plugin, change)

    async def submit(
        self,
        kind: OpKind,
        vms: list[str],
        *,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Operation:
        """Ask for an operation on existing VMs (ids or names) as the principal ``system``
        (role admin), through the normal phases (request hooks, scheduler, …). ``start`` of a
        lost, stopped or failed VM with ``target_node`` (or, if its node is down, a node the
        scheduler picks) moves it cold and boots it there. Returns the operation, running."""
        return await self.engine.submit(kind, vms, target_node=target_node, kwargs=kwargs)

    async def fence(self, node: str, vm_id: str, reason: str) -> None:
        """Tell ``node``'s LNM to destroy its copy of ``vm_id`` without touching the VM
        record; emits ``fenced``. Raises ``usher.ctrl.nodes.NodeGone`` (node not connected)
        or ``CommandFailed`` (the node refused)."""
        await self.engine.fence(node, vm_id, reason)
