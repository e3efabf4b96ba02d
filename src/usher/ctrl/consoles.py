"""Attached consoles: read-write serial consoles streamed to clients (``ush console --attach``,
the dashboard), behind ``/v1/vms/{vm}/console/attach`` (:mod:`usher.ctrl.api.consoles`).

Everyone attached to one VM shares one :class:`Feed`: a single task that asks the VM's node
for new console output (the LNM ``console`` command) and hands each piece to every attached
:class:`Session`. It polls every :data:`POLL_MIN` s after output or input, slowing down to
:data:`POLL_MAX` s while the console is quiet, and ends when its last session leaves; so many
clients on one VM cost one poll, and the controller holds at most :data:`MAX_SESSIONS`.
A feed starts with the last :data:`HISTORY` bytes of output, which a session joining later
gets too. Input goes to the node at once (``console_input``), and the feed looks for the
echo straight after.

A feed follows its VM: when the node no longer knows it, the VM's record says where it went
(after a live migration the output goes on at the same offset, in the same shared log; where
the new node keeps a console of its own, from its last :data:`HISTORY` bytes). When the
record is gone the VM was destroyed and every session ends (:data:`VM_GONE`), as when its
node's link is gone or its driver has no console, once :data:`READ_FAILURES` reads in a row
failed (:data:`NODE_GONE`, :data:`NO_CONSOLE`). A session whose client does not read its
output ends once :data:`BACKLOG` characters wait for it (:data:`TOO_SLOW`), so a stalled
client holds no more than that.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from usher.ctrl.nodes import CommandFailed, NodeGone, NodeRegistry
from usher.ctrl.store import Store
from usher.model import VM

log = logging.getLogger(__name__)

HISTORY = 8 * 1024
"""Bytes of earlier output a feed starts with."""
POLL_MIN = 0.05
POLL_MAX = 0.5
"""Seconds between two reads of a feed's console: the least, after activity; the most, idle."""
CALL_TIMEOUT = 10.0
SAME_LOG_CHECK = 64
"""Characters of what a feed read last that it looks for where its VM moved."""
READ_FAILURES = 4
"""Reads of a console that fail in a row (:data:`POLL_MAX` apart) before its sessions end."""
BACKLOG = 1 << 20
"""Characters of output a session may have waiting before it ends as too slow."""
MAX_SESSIONS = 256
"""Sessions attached at once, on all VMs together."""
MAX_SESSIONS_EACH = 16
"""Sessions one principal may have attached at once: nobody takes every slot."""
MAX_INPUT = 4096
"""Most bytes of one input message (a WebSocket frame); the LNM takes as much at once."""

# WebSocket close codes: what ended a session (4000-4999 are the application's own)
DETACHED = 1000
TOO_BIG = 1009
TOO_SLOW = 4408
VM_GONE = 4404
NO_CONSOLE = 4409
NODE_GONE = 4503
SHUTTING_DOWN = 1001


class ConsoleEnded(Exception):
    """A feed or session ended: ``code`` (one of the codes above) and why, for the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class InputRefused(Exception):
    """The node did not take input (the VM is stopped, its driver takes none, …)."""


@dataclass(eq=False)
class Session:
    """One attached client: the output waiting for it (:meth:`take`), how much it typed,
    and once it ended, why (``ended``, announced by ``done``)."""

    vm_id: str
    bytes_typed: int = 0
    ended: ConsoleEnded | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _waiting: deque[str] = field(default_factory=deque)
    _size: int = 0
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, text: str) -> bool:
        """Queue ``text`` for the client; False, and the session ends (:data:`TOO_SLOW`), if
        more than :data:`BACKLOG` characters would wait."""
        if self.ended is not None:
            return False
        if self._size + len(text) > BACKLOG:
            self._waiting.clear()
            self._size = 0
            self.end(ConsoleEnded(TOO_SLOW, "the client did not keep up with the output"))
            return False
        self._waiting.append(text)
        self._size += len(text)
        self._ready.set()
        return True

    @property
    def has_output(self) -> bool:
        return bool(self._waiting)

    async def take(self) -> str:
        """The output waiting, all of it, once there is some."""
        await self._ready.wait()
        self._ready.clear()
        text = "".join(self._waiting)
        self._waiting.clear()
        self._size = 0
        return text

    def end(self, ended: ConsoleEnded) -> None:
        """The session ends (its route closes the WebSocket); the first reason stands."""
        if self.ended is None:
            self.ended = ended
            self.done.set()


class Feed:
    """One VM's console output, read once for every session attached to it."""

    def __init__(self, hub: ConsoleHub, vm: VM) -> None:
        self._hub = hub
        self.vm_id = vm.id
        self.node = vm.node
        self.history = ""
        self.sessions: set[Session] = set()
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"console-{vm.id}")

    async def _run(self) -> None:
        offset: int | None = None
        pause = POLL_MIN
        failures = 0
        read_from = self.node
        try:
            while True:
                args = {"tail": HISTORY} if offset is None else {"offset": offset}
                try:
                    answer = await self._call("console", args)
                    if self.node != read_from:  # the VM moved (this read or an input saw it)
                        read_from = self.node
                        if offset is not None and not await self._same_log(offset):
                            offset = None  # a console of its own there: start from its end
                        continue
                except ConsoleEnded as ended:  # for good only if it lasts (a VM being
                    failures += 1  # destroyed is unknown to its node before its record goes)
                    if ended.code == VM_GONE or failures >= READ_FAILURES:
                        raise
                    await asyncio.sleep(POLL_MAX)
                    continue
                failures = 0
                data = str(answer.get("data", ""))
                offset = int(answer.get("next", offset or 0))
                if data:
                    self._publish(data)
                pause = POLL_MIN if data else min(pause * 2, POLL_MAX)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
                if self._wake.is_set():
                    self._wake.clear()
                    pause = POLL_MIN
        except ConsoleEnded as ended:
            self._end(ended)
        except asyncio.CancelledError:
            self._end(ConsoleEnded(SHUTTING_DOWN, "the controller is stopping"))
            raise
        except Exception as exc:  # never leave sessions hanging on a feed that broke
            log.exception("console feed of VM %s failed", self.vm_id)
            self._end(ConsoleEnded(NO_CONSOLE, f"the console broke: {exc}"))

    async def _same_log(self, offset: int) -> bool:
        """Whether the VM's console where it runs now holds what this feed read last, up to
        ``offset`` (QEMU's shared log does; a driver that keeps a console per node does not)."""
        last = self.history[-SAME_LOG_CHECK:].encode()
        if len(last) > offset:
            return False
        answer = await self._call("console", {"offset": offset - len(last)})
        return str(answer.get("data", "")).encode()[: len(last)] == last

    def _publish(self, data: str) -> None:
        self.history = (self.history + data)[-HISTORY:]
        for session in list(self.sessions):
            if not session.offer(data):
                self.sessions.discard(session)

    def _end(self, ended: ConsoleEnded) -> None:
        for session in self.sessions:
            session.end(ended)
        self.sessions.clear()
        self._hub.drop(self)

    async def write(self, data: bytes) -> None:
        """Type ``data`` into the VM's console; :class:`InputRefused` if the node will not,
        twice :data:`POLL_MAX` apart (a VM that just moved may not have settled yet)."""
        encoded = base64.b64encode(data).decode("ascii")
        for attempt in (1, 2):
            try:
                await self._call("console_input", {"data": encoded})
                break
            except ConsoleEnded as ended:
                if ended.code != NO_CONSOLE:
                    raise
                if attempt == 2:
                    raise InputRefused(ended.reason) from None
                await asyncio.sleep(POLL_MAX)
        self._wake.set()

    async def _call(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run ``action`` on the VM's node, following the VM if it moved; raises
        :class:`ConsoleEnded` when it cannot be run there."""
        for _ in range(3):
            try:
                link = self._hub.nodes.link(self.node)
                return await link.call(action, vm_id=self.vm_id, args=args, timeout=CALL_TIMEOUT)
            except (NodeGone, CommandFailed) as exc:
                vm = await self._hub.store.get_vm(self.vm_id)
                if vm is None:
                    raise ConsoleEnded(VM_GONE, "the VM was destroyed") from None
                if vm.node != self.node:  # it moved (a migration, an HA restart): follow it
                    self.node = vm.node
                    continue
                if isinstance(exc, CommandFailed):
                    raise ConsoleEnded(NO_CONSOLE, str(exc)) from None
                raise ConsoleEnded(NODE_GONE, f"node {self.node} does not answer") from None
        raise ConsoleEnded(NODE_GONE, "the VM keeps moving between nodes")


class ConsoleHub:
    """Every attached console of this controller: one :class:`Feed` per VM."""

    def __init__(self, store: Store, nodes: NodeRegistry) -> None:
        self.store = store
        self.nodes = nodes
        self._feeds: dict[str, Feed] = {}
        self._count = 0
        self._whose: dict[Session, str] = {}

    def attach(self, vm: VM, principal: str) -> tuple[Feed, Session]:
        """A new session of ``principal`` on ``vm``'s feed (started if there is none), first
        given the recent output; :class:`ConsoleEnded` when :data:`MAX_SESSIONS` are
        attached already, or :data:`MAX_SESSIONS_EACH` of this principal's."""
        if self._count >= MAX_SESSIONS:
            raise ConsoleEnded(1013, f"{MAX_SESSIONS} consoles are attached already; try later")
        if list(self._whose.values()).count(principal) >= MAX_SESSIONS_EACH:
            raise ConsoleEnded(
                1013, f"{principal} has {MAX_SESSIONS_EACH} consoles attached, the most one may"
            )
        feed = self._feeds.get(vm.id)
        if feed is None:
            feed = self._feeds[vm.id] = Feed(self, vm)
        session = Session(vm.id)
        if feed.history:
            session.offer(feed.history)
        feed.sessions.add(session)
        self._count += 1
        self._whose[session] = principal
        return feed, session

    def detach(self, feed: Feed, session: Session) -> None:
        """``session`` leaves; its feed stops when it was the last."""
        self._count -= 1
        self._whose.pop(session, None)
        feed.sessions.discard(session)
        if not feed.sessions and self._feeds.get(feed.vm_id) is feed:
            feed.task.cancel()
            del self._feeds[feed.vm_id]

    def drop(self, feed: Feed) -> None:
        """A feed ended by itself: the next attach starts a new one."""
        if self._feeds.get(feed.vm_id) is feed:
            del self._feeds[feed.vm_id]

    async def close(self) -> None:
        """End every feed (the controller stops): their sessions are told so."""
        feeds = list(self._feeds.values())
        for feed in feeds:
            feed.task.cancel()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError):
                await feed.task
