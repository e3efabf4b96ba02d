"""What a plugin may use of the controller: the context handed to ``usher_configure``.

Plugins import it as :class:`usher.plugin.PluginContext`. It offers what a policy needs and
nothing of the controller's machinery: read the records, keep its own values, fire events,
ask for operations through every phase, fence a copy, authorize, and (for plugins that keep
tables of their own) the database."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from usher.ctrl.authz import authorize
from usher.ctrl.credentials import Credentials

if TYPE_CHECKING:
    from usher.ctrl.config import Settings
    from usher.ctrl.engine import Engine
    from usher.ctrl.events import EventBus
    from usher.ctrl.plugins import PluginHost
    from usher.ctrl.store import PluginData, Store
    from usher.model import VM, Event, Operation, OpKind, Page, Principal, Scope

T = TypeVar("T")


class Records:
    """The controller's records, read-only."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get_vm(self, ref: str) -> VM | None:
        """The VM with id or name ``ref``."""
        return await self._store.get_vm(ref)

    async def get_vms(self, ids: Iterable[str]) -> dict[str, VM]:
        """The VMs of ``ids`` that exist, by id."""
        return await self._store.get_vms(ids)

    async def vms_where(
        self,
        *,
        node: str | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
    ) -> list[VM]:
        """Every VM on ``node`` / in ``cluster`` / migrating to ``target_node``."""
        return await self._store.vms_where(node=node, cluster=cluster, target_node=target_node)

    async def list_vms(
        self,
        *,
        cluster: str | None = None,
        owner: str | None = None,
        node: str | None = None,
        state: str | None = None,
        tags: list[str] | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[VM]:
        """A page of VMs, as ``GET /v1/vms`` lists them (``tags``: VMs with all of them)."""
        return await self._store.list_vms(
            cluster=cluster,
            owner=owner,
            node=node,
            state=state,
            tags=tags,
            limit=limit,
            cursor=cursor,
        )

    async def get_op(self, op_id: str) -> Operation | None:
        return await self._store.get_op(op_id)


class PluginContext:
    """Handed to every plugin at start (``usher_configure``)."""

    def __init__(self, store: Store, bus: EventBus, settings: Settings) -> None:
        self.settings = settings
        """The controller's settings (read them; changing them changes nothing)."""
        self.records = Records(store)
        self.credentials = Credentials(store)
        self._store = store
        self._bus = bus
        self._engine: Engine | None = None
        self._plugins: PluginHost | None = None

    def attach(self, engine: Engine, plugins: PluginHost) -> None:
        """Called once by the engine it fronts."""
        self._engine = engine
        self._plugins = plugins

    @property
    def _running(self) -> tuple[Engine, PluginHost]:
        if self._engine is None or self._plugins is None:
            raise RuntimeError("the operation engine is not running")
        return self._engine, self._plugins

    def logger(self, plugin: str) -> logging.Logger:
        return logging.getLogger(f"usher.plugin.{plugin}")

    @property
    def database(self) -> AsyncEngine:
        """The controller's database, for a plugin that keeps tables of its own (name them
        after the plugin; never write Usher's tables)."""
        return self._store.engine

    # --- events --------------------------------------------------------------------------

    async def emit(self, name: str, **fields: Any) -> Event:
        """Fire an event of the plugin's own (it reaches the stream and other plugins)."""
        return await self._bus.emit(name, **fields)

    async def record_events(self, events: Iterable[Event]) -> None:
        """Keep ``events`` in the controller's event log (``GET /v1/events``)."""
        await self._store.add_events(events)

    # --- the plugin's own values ---------------------------------------------------------

    async def get(self, plugin: str, key: str, default: Any = None) -> Any:
        """Read a value a plugin stored under ``key``."""
        return await self._store.plugin_get(plugin, key, default)

    async def put(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON value for a plugin; it survives controller restarts."""
        await self._store.plugin_set(plugin, key, value)

    async def atomically(self, plugin: str, change: Callable[[PluginData], Awaitable[T]]) -> T:
        """Read-modify-write of a plugin's values, atomic in the database: ``change`` gets an
        object with ``await get(key, default)`` and ``await put(key, value)``; two changes at
        once behave as one after the other (on SQLite and PostgreSQL). It may run again if
        a concurrent change got in first; an exception from it changes nothing. Use it for
        every check-then-act (a membership, an owner, a counter)."""
        return await self._store.plugin_atomically(plugin, change)

    # --- policy: who may do what ---------------------------------------------------------

    async def authorize(self, principal: Principal, action: str, **target: Any) -> None:
        """Raise :class:`usher.plugin.Forbidden` unless the ``authorize`` hooks allow
        ``principal`` to do ``action`` on ``target``."""
        await authorize(self._running[1], principal, action, target)

    async def scope(self, principal: Principal) -> Scope | None:
        """What ``principal`` may see in listings (None: everything)."""
        return await self._running[0].scope(principal)

    async def check_password(
        self, username: str, password: str
    ) -> AsyncIterator[tuple[str, Principal | None, BaseException | None]]:
        """Ask every password plugin in turn: (plugin, the principal it answers or None,
        the error if it failed)."""
        async for answer in self._running[1].answers(
            "check_password", username=username, password=password
        ):
            yield answer

    async def ssh_keys(self, user: str) -> list[str]:
        """The SSH public keys principal ``user`` logs into guests with: every plugin's
        ``ssh_keys`` answer (the ``keys`` plugin's registered keys, a directory's), each key
        once. A plugin that fails is logged and left out."""
        return await self._running[1].ssh_keys(user)

    # --- operations ----------------------------------------------------------------------

    async def submit(
        self,
        kind: OpKind,
        vms: list[str],
        *,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
        strict: bool = False,
    ) -> Operation:
        """Ask for an operation on existing VMs (ids or names) as the principal ``system``
        (role admin), through the normal phases (request hooks, scheduler, …). ``start`` of a
        lost, stopped or failed VM with ``target_node`` (or, if its node is down, a node the
        scheduler picks) moves it cold and boots it there. Returns the operation, running;
        raises :class:`usher.plugin.RequestError` if it is refused.

        As for a user, VMs already where the action leads are left alone (named in the
        operation's ``result["skipped"]``) and VMs that cannot take it fail alone (in
        ``result["errors"]``) while the others go on; ``strict`` refuses the whole request
        instead if any VM is not in a state the action starts from."""
        engine = self._running[0]
        return await engine.submit(kind, vms, target_node=target_node, kwargs=kwargs, strict=strict)

    async def fence(self, node: str, vm_id: str, reason: str) -> None:
        """Tell ``node``'s LNM to destroy its copy of ``vm_id`` without touching the VM
        record; emits ``fenced``. Raises :class:`usher.plugin.NodeGone` (node not
        connected) or :class:`usher.plugin.CommandFailed` (the node refused)."""
        await self._running[0].fence(node, vm_id, reason)
