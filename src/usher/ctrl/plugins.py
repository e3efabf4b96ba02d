"""The plugin host: finds plugins by entry point, registers them with pluggy, calls their hooks.

pluggy validates every hook implementation against :mod:`usher.hookspecs`; the host calls the
implementations itself so that each plugin can be awaited, timed out and blamed on its own:

* decision hooks: plugins in configured order, the first answer wins;
* request hooks: every plugin in order; :class:`~usher.hookspecs.Veto` refuses the request, any
  other exception refuses it too (a broken policy plugin must not let requests through);
* a decision or request hook that does not answer within ``hook_timeout`` seconds counts as
  failed (a hanging plugin must not hold API calls);
* every call is timed and reported to the ``hook_observers`` (the metrics): plugin, hook,
  seconds, and whether it failed (raised anything but a Veto, or was timed out);
* notification hooks: each plugin has its own queue and worker, so a slow or failing plugin
  delays only itself; each call is timed out and its failure logged and published as a
  ``plugin_error`` event.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from usher import hookspecs
from usher.ctrl.events import EventBus
from usher.hookspecs import Veto
from usher.model import REQUEST_HOOKS_MAY_CHANGE, Event, OpRequest

if TYPE_CHECKING:
    from usher.ctrl.context import PluginContext

log = logging.getLogger("usher.plugins")
ENTRY_POINT_GROUP = "usher.plugins"


class PluginError(Exception):
    """A plugin failed in a hook whose answer the controller needs."""

    def __init__(self, plugin: str, hook: str, exc: BaseException) -> None:
        self.reason = str(exc) or type(exc).__name__
        super().__init__(f"plugin {plugin!r} failed in {hook}: {self.reason}")
        self.plugin = plugin
        self.hook = hook


class Vetoed(Exception):
    """A request hook refused the request."""

    def __init__(self, plugin: str, hook: str, reason: str) -> None:
        super().__init__(f"refused by plugin {plugin!r} ({hook}): {reason}")
        self.plugin = plugin
        self.hook = hook
        self.reason = reason


def available_plugins() -> dict[str, Any]:
    """Installed plugins by name: the entry points of group ``usher.plugins``."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        return (
            getattr(importlib.import_module(module_name), attr)
            if attr
            else importlib.import_module(module_name)
        )
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load plugin {path!r}: {exc}") from exc


HookObserver = Callable[[str, str, float, bool], None]
"""``observer(plugin, hook, seconds, failed)``, told of every hook call the host makes."""


@dataclass
class _Notifier:
    """One plugin's ``usher_event``: its queue of events, the task that hands them over, and
    the watch on the one being handled (``timeout`` seconds each)."""

    plugin: str
    impl: pluggy.HookImpl
    timeout: float
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    busy_since: float | None = None  # loop time the event being handled was handed over
    overdue: bool = False  # the watch cancelled the task: that event timed out
    _watch: asyncio.TimerHandle | None = None

    def began(self) -> None:
        """An event is handed over. One timer per notifier, re-armed only when it fires,
        watches it: a timer per event cost more than most plugins' handling of it."""
        loop = asyncio.get_running_loop()
        self.busy_since = loop.time()
        if self._watch is None:
            self._watch = loop.call_at(self.busy_since + self.timeout, self._check)

    def ended(self) -> None:
        self.busy_since = None

    def unwatch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _check(self) -> None:
        self._watch = None
        if self.busy_since is None or self.task is None:
            return
        due = self.busy_since + self.timeout
        if self.task.get_loop().time() >= due:
            self.overdue = True
            self.task.cancel()
        else:
            self._watch = self.task.get_loop().call_at(due, self._check)


class PluginHost:
    def __init__(
        self,
        ctx: PluginContext,
        bus: EventBus,
        timeout: float = 5.0,
        hook_timeout: float = 10.0,
    ) -> None:
        self.ctx = ctx
        self.bus = bus
        self.timeout = timeout
        self.hook_timeout = hook_timeout
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.order: list[str] = []
        self._notifiers: list[_Notifier] = []
        self.hook_observers: list[HookObserver] = []

    # --- set-up ------------------------------------------------------------------------

    def load(self, names: list[str], extra: dict[str, Any] | None = None) -> None:
        """Register the plugins ``names`` (entry-point names), or objects given in ``extra``.

        A name is an entry point, or ``module:attribute`` for a plugin that is not packaged.
        Either names a module (its hook functions are the plugin) or a class (one instance per
        controller, so two controllers in one process never share state).
        """
        extra = extra or {}
        found = available_plugins()
        for name in names:
            if name in extra:
                plugin = extra[name]
            elif name in found:
                plugin = found[name].load()
            elif ":" in name:
                plugin = _import(name)
            else:
                known = ", ".join(sorted(found)) or "none"
                raise ValueError(f"plugin {name!r} is enabled but not installed (known: {known})")
            if inspect.isclass(plugin):  # a class is a plugin per controller
                plugin = plugin()
            self.register(name, plugin)

    def register(self, name: str, plugin: Any) -> None:
        self.pm.register(plugin, name=name)
        self.order.append(name)

    def routers(self) -> list[Any]:
        """The API routers plugins contribute through ``usher_routes``."""
        found: list[Any] = []
        for plugin, impl in self._impls("usher_routes"):
            try:
                found.extend(impl.function() or [])
            except Exception as exc:
                raise PluginError(plugin, "usher_routes", exc) from exc
        return found

    async def start(self, configs: dict[str, dict[str, Any]]) -> None:
        for plugin, impl in self._impls("usher_configure"):
            await self._call("usher_configure", impl, ctx=self.ctx, config=configs.get(plugin, {}))
        for plugin, impl in self._impls("usher_event"):
            notifier = _Notifier(plugin, impl, self.timeout)
            notifier.task = asyncio.create_task(self._deliver(notifier), name=f"notify-{plugin}")
            self._notifiers.append(notifier)
        self.bus.notifier = self.notify

    async def stop(self, drain_timeout: float = 2.0) -> None:
        self.bus.notifier = None
        for n in self._notifiers:
            try:
                await asyncio.wait_for(n.queue.join(), drain_timeout)
            except TimeoutError:
                log.warning("plugin %s did not take its last events in time", n.plugin)
            n.unwatch()
            if n.task:
                n.task.cancel()
        self._notifiers.clear()
        for plugin, impl in self._impls("usher_shutdown"):
            try:
                await asyncio.wait_for(self._call("usher_shutdown", impl), self.timeout)
            except Exception:
                log.exception("plugin %s failed in usher_shutdown", plugin)

    # --- calling -----------------------------------------------------------------------

    def _impls(self, hook: str) -> list[tuple[str, pluggy.HookImpl]]:
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(((i.plugin_name, i) for i in impls), key=lambda p: rank.get(p[0], 1 << 30))

    def has_impl(self, hook: str) -> bool:
        return bool(self._impls(hook))

    @staticmethod
    async def _invoke(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        result = impl.function(**{k: kwargs[k] for k in impl.argnames if k in kwargs})
        if inspect.isawaitable(result):
            result = await result
        return result

    def _observed(self, plugin: str, hook: str, began: float, failed: bool) -> None:
        seconds = time.perf_counter() - began
        for observer in self.hook_observers:
            observer(plugin, hook, seconds, failed)

    async def _call(self, hook: str, impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        """Call one implementation, timed: a failure is anything but a Veto (a refusal is
        the hook's answer), a cancellation (the caller timing it out) included."""
        began, failed = time.perf_counter(), True
        try:
            result = await self._invoke(impl, **kwargs)
            failed = False
            return result
        except Veto:
            failed = False
            raise
        finally:
            self._observed(impl.plugin_name, hook, began, failed)

    async def _answer(self, plugin: str, hook: str, impl: pluggy.HookImpl, **kwargs: Any) -> Any:
        """Call a decision or request hook within ``hook_timeout``; a Veto passes through as
        :class:`Vetoed`, any other failure (a timeout too) becomes :class:`PluginError`."""
        try:
            async with asyncio.timeout(self.hook_timeout):  # no task per call, unlike wait_for
                return await self._call(hook, impl, **kwargs)
        except Veto as veto:
            raise Vetoed(plugin, hook, str(veto) or "no reason given") from veto
        except (DBAPIError, PoolTimeout):
            raise  # the controller's database failed, not the plugin: a 503 for the caller
        except TimeoutError as exc:
            log.error("plugin %s did not answer %s within %g s", plugin, hook, self.hook_timeout)
            raise PluginError(
                plugin, hook, TimeoutError(f"no answer within {self.hook_timeout:g} s")
            ) from exc
        except Exception as exc:
            log.exception("plugin %s failed in %s", plugin, hook)
            raise PluginError(plugin, hook, exc) from exc

    async def decide(self, hook: str, **kwargs: Any) -> Any:
        """Call a decision hook: the first plugin answering something other than None wins.

        A :class:`~usher.hookspecs.Veto` becomes :class:`Vetoed`, any other exception
        :class:`PluginError`."""
        for plugin, impl in self._impls(hook):
            answer = await self._answer(plugin, hook, impl, **kwargs)
            if answer is not None:
                return answer
        return None

    async def answers(
        self, hook: str, **kwargs: Any
    ) -> AsyncIterator[tuple[str, Any, Exception | None]]:
        """Ask each plugin's ``hook`` in configured order, one at a time, as the caller
        iterates: ``(plugin, answer, None)``, or ``(plugin, None, error)`` if it raised."""
        for plugin, impl in self._impls(hook):
            try:
                answer = await self._answer(plugin, hook, impl, **kwargs)
            except (PluginError, Vetoed) as exc:
                yield plugin, None, exc
            else:
                yield plugin, answer, None

    async def ssh_keys(self, user: str) -> list[str]:
        """Every plugin's ``ssh_keys`` for ``user``, each key once; a plugin that fails is
        logged and left out."""
        keys: list[str] = []
        async for plugin, answer, error in self.answers("ssh_keys", user=user):
            if error is not None:
                log.warning("plugin %s gave no SSH keys for %s: %s", plugin, user, error)
            keys.extend(key for key in answer or () if key not in keys)
        return keys

    async def call_all(self, hook: str, **kwargs: Any) -> None:
        """Call every plugin's ``hook``; a failure is logged and the others still run."""
        for plugin, impl in self._impls(hook):
            try:
                await asyncio.wait_for(self._call(hook, impl, **kwargs), self.timeout)
            except Exception:
                log.exception("plugin %s failed in %s", plugin, hook)

    async def run_request_hooks(self, request: OpRequest) -> None:
        """Run ``request`` and ``<op>_request`` hooks; raise :class:`Vetoed` or PluginError
        (also when a hook changed a field outside :data:`REQUEST_HOOKS_MAY_CHANGE`)."""
        fixed = request.model_dump(exclude=set(REQUEST_HOOKS_MAY_CHANGE))
        for hook in ("request", f"{request.kind.value}_request"):
            for plugin, impl in self._impls(hook):
                await self._answer(plugin, hook, impl, request=request)
                after = request.model_dump(exclude=set(REQUEST_HOOKS_MAY_CHANGE))
                changed = sorted(k for k in fixed if after.get(k) != fixed[k])
                if changed:
                    allowed = ", ".join(sorted(REQUEST_HOOKS_MAY_CHANGE))
                    raise PluginError(
                        plugin,
                        hook,
                        ValueError(
                            f"it changed {', '.join(changed)} of the request; request hooks "
                            f"may change only {allowed}"
                        ),
                    )

    async def notify(self, event: Event) -> None:
        for n in self._notifiers:
            if event.name == "plugin_error" and event.data.get("plugin") == n.plugin:
                continue  # never feed a plugin the news of its own failure
            n.queue.put_nowait(event)

    async def _deliver(self, n: _Notifier) -> None:
        sync = not inspect.iscoroutinefunction(n.impl.function)
        while True:
            event = await n.queue.get()
            # timed here, not in _call: a sync plugin runs in a thread that a timeout cannot
            # stop, and its timeout is its failure
            began, failed = time.perf_counter(), True
            n.began()
            try:
                try:
                    if sync:
                        await asyncio.to_thread(n.impl.function, event=event)
                    else:
                        await self._invoke(n.impl, event=event)
                except asyncio.CancelledError:
                    if not n.overdue:
                        raise  # the host stopping
                    n.overdue = False
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    raise TimeoutError from None
                finally:
                    n.ended()
                failed = False
            except Exception as exc:
                reason = "timed out" if isinstance(exc, TimeoutError) else repr(exc)
                log.warning("plugin %s failed on event %s: %s", n.plugin, event.name, reason)
                await self.bus.publish(
                    Event(
                        name="plugin_error",
                        data={
                            "plugin": n.plugin,
                            "hook": "usher_event",
                            "error": reason,
                            "event": event.name,
                        },
                    )
                )
            finally:
                self._observed(n.plugin, "usher_event", began, failed)
                n.queue.task_done()
