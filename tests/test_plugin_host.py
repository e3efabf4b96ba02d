"""The plugin host on its own: order, vetoes, failures and timeouts of each hook kind."""

from __future__ import annotations

import asyncio

import pytest

from usher import Veto, hookimpl
from usher.ctrl.config import Settings
from usher.ctrl.context import PluginContext
from usher.ctrl.events import EventBus
from usher.ctrl.plugins import PluginError, PluginHost, Vetoed
from usher.model import Event, OpKind, OpRequest, Principal


def host(timeout: float = 0.2) -> PluginHost:
    bus = EventBus()
    ctx = PluginContext(store=None, bus=bus, settings=Settings())  # type: ignore[arg-type]
    return PluginHost(ctx, bus, timeout=timeout)


def request(kind: OpKind = OpKind.START) -> OpRequest:
    return OpRequest(kind=kind, principal=Principal(name="alice"))


class Answers:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    @hookimpl
    def authorize(self, principal: Principal, action: str) -> object:
        return self.answer


async def test_decision_hooks_follow_configured_order() -> None:
    h = host()
    h.register("undecided", Answers(None))
    h.register("no", Answers(False))
    h.register("yes", Answers(True))
    await h.start({})
    assert (
        await h.decide("authorize", principal=Principal(name="a"), action="x", target={}) is False
    )


async def test_veto_and_broken_request_hooks() -> None:
    class Gate:
        @hookimpl
        def start_request(self, request: OpRequest) -> None:
            raise Veto("no starts on Fridays")

    class Buggy:
        @hookimpl
        async def stop_request(self, request: OpRequest) -> None:
            raise ZeroDivisionError

    h = host()
    h.register("gate", Gate())
    h.register("buggy", Buggy())
    await h.start({})
    with pytest.raises(Vetoed, match="no starts on Fridays") as vetoed:
        await h.run_request_hooks(request(OpKind.START))
    assert vetoed.value.plugin == "gate" and vetoed.value.hook == "start_request"
    with pytest.raises(PluginError, match="buggy"):
        await h.run_request_hooks(request(OpKind.STOP))
    await h.run_request_hooks(request(OpKind.PAUSE))  # nobody objects


async def test_a_slow_notification_plugin_delays_only_itself() -> None:
    got: list[str] = []

    class Slow:
        @hookimpl
        async def usher_event(self, event: Event) -> None:
            await asyncio.sleep(10)

    class Quick:
        @hookimpl
        def usher_event(self, event: Event) -> None:
            got.append(event.name)

    h = host(timeout=0.2)
    h.register("slow", Slow())
    h.register("quick", Quick())
    await h.start({})
    errors: list[Event] = []
    async with h.bus.subscribe(lambda e: e.name == "plugin_error") as queue:
        for i in range(3):
            await h.bus.emit(f"e{i}")
        await asyncio.sleep(0.1)
        assert got == ["e0", "e1", "e2"]  # not held up by the slow one
        for _ in range(3):
            errors.append(await asyncio.wait_for(queue.get(), 2))
    assert {e.data["plugin"] for e in errors} == {"slow"}
    assert all(e.data["error"] == "timed out" for e in errors)
    await h.stop(drain_timeout=0.1)


async def test_each_event_has_the_whole_timeout() -> None:
    """Events that each take most of the timeout, one after another, all pass (the watch is
    per event, not per stream); the one that overruns times out alone."""
    done: list[str] = []

    class Steady:
        @hookimpl
        async def usher_event(self, event: Event) -> None:
            await asyncio.sleep(0.6 if event.name != "long" else 1.5)
            done.append(event.name)

    h = host(timeout=1.0)
    h.register("steady", Steady())
    await h.start({})
    async with h.bus.subscribe(lambda e: e.name == "plugin_error") as queue:
        for name in ("a", "b", "c", "long", "d", "e"):
            await h.bus.emit(name)
        error = await asyncio.wait_for(queue.get(), 5)
        assert (error.data["event"], error.data["error"]) == ("long", "timed out")
        await asyncio.sleep(1.5)  # d and e
        assert queue.empty()
    assert done == ["a", "b", "c", "d", "e"]
    await h.stop(drain_timeout=0.1)


async def test_loading_by_import_path_and_unknown_names() -> None:
    h = host()
    h.load(["scheduler", "site_plugins:Policy"])
    assert h.order == ["scheduler", "site_plugins:Policy"]
    with pytest.raises(ValueError, match="not installed"):
        host().load(["no-such-plugin"])
    with pytest.raises(ValueError, match="cannot load plugin"):
        host().load(["site_plugins:Missing"])
