"""The node registry: the nodes the controller knows and the live links to their LNMs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from usher import wire
from usher.bounds import MAX_LINK_MESSAGE
from usher.ctrl.events import EventBus
from usher.ctrl.link_messages import Hello
from usher.ctrl.observations import Observations
from usher.ctrl.store import Store
from usher.model import Capacity, Node, NodeState, Usage, new_id, now

log = logging.getLogger("usher.nodes")
# how often a node's reported usage is written to its record and announced (a ``usage``
# event): as often as the usage history samples it by default
USAGE_PERSIST_EVERY = 30.0

Sender = Callable[[str], Awaitable[None]]
"""Sends one message, as JSON text, on a node's link."""


class NodeGone(Exception):
    """The node's LNM is not connected (or its link dropped while a command ran)."""


class CommandFailed(Exception):
    """The LNM ran the command and its driver refused or failed; the message says why."""


class NodeLink:
    """One connected LNM: sends commands and matches their replies. The successful reply to
    a command sent with ``observe`` (one whose outcome the engine records as the VM's state)
    marks what is known of that VM on this node (see :mod:`usher.ctrl.observations`)."""

    def __init__(
        self,
        name: str,
        send: Sender,
        close: Callable[[], Awaitable[None]],
        observations: Observations | None = None,
    ) -> None:
        self.name = name
        self._send = send
        self._close = close
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._vm_of: dict[str, str] = {}  # command id -> the VM it is about
        self.observations = observations or Observations()
        self.closed = False

    async def call(
        self,
        action: str,
        *,
        timeout: float,
        vm_id: str | None = None,
        guest: dict[str, Any] | None = None,
        args: dict[str, Any] | None = None,
        cmd_id: str | None = None,
        observe: bool = False,
    ) -> dict[str, Any]:
        """Run ``action`` on the LNM and return its result; raise CommandFailed or NodeGone.
        ``cmd_id`` names the command (for a later ``cancel``); one is made up if not given.
        ``observe``: the caller records the VM's state from the answer, so a report of the
        VM received before the answer is older than what is known (and will be dropped)."""
        if self.closed:
            raise NodeGone(f"node {self.name} is not connected")
        cmd_id = cmd_id or new_id("cmd")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = future
        msg = {
            "type": "command",
            "id": cmd_id,
            "action": action,
            "vm_id": vm_id,
            "guest": guest,
            "args": args or {},
        }
        try:
            text = wire.dumps(msg)
        except ValueError as exc:
            raise CommandFailed(f"cannot send {action} to node {self.name}: {exc}") from None
        if len(text) > MAX_LINK_MESSAGE:
            raise CommandFailed(
                f"cannot send {action} to node {self.name}: the command is larger than the "
                f"link's limit of {MAX_LINK_MESSAGE} bytes"
            )
        if vm_id is not None and observe:
            self._vm_of[cmd_id] = vm_id
        try:
            try:
                await self._send(text)
            except Exception as exc:  # whatever the transport raises once the link is down
                raise NodeGone(f"node {self.name}: link lost ({exc!r})") from exc
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise CommandFailed(
                f"node {self.name} did not answer {action} in {timeout:.0f} s"
            ) from None
        finally:
            self._pending.pop(cmd_id, None)
            self._vm_of.pop(cmd_id, None)

    def on_reply(self, msg: dict[str, Any], number: int = 0) -> None:
        """The reply ``msg``, the message numbered ``number`` on receipt."""
        cmd_id = str(msg.get("id"))
        vm_id = self._vm_of.get(cmd_id)
        if vm_id is not None and number and msg.get("ok"):
            self.observations.saw(vm_id, self.name, number)
        future = self._pending.get(cmd_id)
        if future is None or future.done():
            return
        if msg.get("ok"):
            future.set_result(msg.get("result") or {})
        else:
            future.set_exception(CommandFailed(str(msg.get("error") or "command failed")))

    async def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NodeGone(f"node {self.name} went away: {reason}"))
        with contextlib.suppress(Exception):
            await self._close()


class NodeRegistry:
    """Node records (persisted) plus the links of the nodes that are connected now."""

    def __init__(self, store: Store, bus: EventBus, node_timeout: float) -> None:
        self.store = store
        self.bus = bus
        self.node_timeout = node_timeout
        self.observations = Observations()
        self.nodes: dict[str, Node] = {}
        self.links: dict[str, NodeLink] = {}
        self.dialled: set[str] = set()  # nodes that said hello since the controller started
        self._usage_saved: dict[str, float] = {}
        # copies handed out by snapshot(), kept until their node changes (every change to a
        # node goes through this class, which drops its copy): a placement among 1,000
        # nodes copies only those that changed since the last one
        self._copies: dict[str, Node] = {}

    async def load(self) -> list[str]:
        """Read node records at start: none is connected yet, so all are down until they
        dial. Returns the names of those that were up when the controller stopped."""
        were_up = []
        for node in await self.store.list_nodes():
            if node.state != NodeState.DOWN:
                were_up.append(node.name)
            node.connected = False
            node.state = NodeState.DOWN
            self.nodes[node.name] = node
        return were_up

    def snapshot(self) -> list[Node]:
        """Copies of every node, to read and not to change (they are shared between calls)."""
        copies = self._copies
        for name, node in self.nodes.items():
            if name not in copies:
                copies[name] = node.model_copy(deep=True)
        return [copies[name] for name in self.nodes]

    def _changed(self, name: str) -> None:
        self._copies.pop(name, None)
        self.store.changes.mark(name)

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def link(self, name: str | None) -> NodeLink:
        link = self.links.get(name) if name else None
        if link is None or link.closed:
            raise NodeGone(f"node {name} is not connected" if name else "the VM has no node")
        return link

    @staticmethod
    def _derive_state(node: Node) -> NodeState:
        if not node.connected:
            return NodeState.DOWN
        if node.maintenance:
            return NodeState.MAINTENANCE
        return NodeState.DRAINING if node.drained else NodeState.UP

    async def attach(self, hello: Hello, link: NodeLink, cap: Capacity) -> Node:
        """A node's LNM said hello: record it up (replacing any older link of that name),
        its capacity what it claims but at most ``cap``. A claim cut down to ``cap``, and a
        capacity other than the node had before, are events (``node_capacity``)."""
        name = link.name
        old = self.links.get(name)
        if old is not None:
            await old.close("replaced by a new connection")
        known = self.nodes.get(name)
        claimed = hello.capacity
        capacity = Capacity(
            vcpus=min(claimed.vcpus, cap.vcpus),
            memory_mb=min(claimed.memory_mb, cap.memory_mb),
            disk_gb=min(claimed.disk_gb, cap.disk_gb),
        )
        if capacity != claimed or (known is not None and known.capacity != capacity):
            await self._capacity_changed(name, known, claimed, capacity, cap)
        node = Node(
            name=name,
            driver=hello.driver,
            capacity=capacity,
            labels=dict(hello.labels),
            capabilities=list(hello.capabilities),
            drained=known.drained if known else False,
            maintenance=known.maintenance if known else False,
            connected=True,
            last_heartbeat=now(),
            joined_at=known.joined_at if known else now(),
        )
        node.state = self._derive_state(node)
        self.nodes[name] = node
        self._changed(name)
        self.links[name] = link
        self.dialled.add(name)
        # written with the next batch (reads of nodes flush first): after a restart,
        # thousands of nodes saying hello are a few writes, not one each
        self.store.save_node_later(node)
        await self.bus.emit(
            "node_join",
            node=name,
            data={
                "driver": node.driver,
                "capacity": node.capacity.model_dump(),
                "labels": node.labels,
            },
        )
        return node

    async def _capacity_changed(
        self, name: str, known: Node | None, claimed: Capacity, capacity: Capacity, cap: Capacity
    ) -> None:
        data = {
            "claimed": claimed.model_dump(),
            "capacity": capacity.model_dump(),
            "before": known.capacity.model_dump() if known else None,
            "cap": cap.model_dump(),
        }
        if capacity != claimed:
            log.warning("node %s claims %s, more than it may: cut to %s", name, claimed, capacity)
        elif known is not None:
            log.info("node %s changed capacity from %s to %s", name, known.capacity, capacity)
        await self.bus.emit("node_capacity", node=name, data=data)

    async def declare_lost(self, name: str, reason: str) -> bool:
        """A node that has not dialled since the controller started (it did not come back
        after a restart) is lost: recorded down and announced (``node_lost``). False if it
        dialled meanwhile (whatever became of it since is its link's business)."""
        node = self.nodes.get(name)
        if node is None or name in self.dialled:
            return False
        node.connected = False
        node.state = NodeState.DOWN
        self._changed(name)
        await self.store.save_node(node)
        await self.bus.emit("node_lost", node=name, data={"reason": reason})
        return True

    async def detach(self, link: NodeLink, reason: str) -> bool:
        """The link ended. Returns True if that made the node go down (not merely replaced)."""
        await link.close(reason)
        if self.links.get(link.name) is not link:
            return False
        del self.links[link.name]
        node = self.nodes[link.name]
        node.connected = False
        node.state = NodeState.DOWN
        self._changed(link.name)
        await self.store.save_node(node)
        await self.bus.emit("node_lost", node=link.name, data={"reason": reason})
        return True

    async def heartbeat(self, name: str, usage: Usage | None) -> None:
        node = self.nodes.get(name)
        if node is None:
            return
        node.last_heartbeat = now()
        if usage is not None:
            node.usage = usage  # replaced whole, never changed in place
        copy = self._copies.get(name)
        if copy is not None:  # a beat changes two fields: no need to copy the node again
            copy.last_heartbeat, copy.usage = node.last_heartbeat, node.usage
        if usage is None:
            return
        if now() - self._usage_saved.get(name, 0.0) >= USAGE_PERSIST_EVERY:
            self._usage_saved[name] = now()
            self.store.save_node_later(node)
            await self.bus.emit("usage", node=name, data=node.usage.model_dump())

    async def set_drained(self, name: str, drained: bool, maintenance: bool = False) -> Node:
        """Drain (no new VMs) or undrain a node; ``maintenance`` also marks it in maintenance."""
        node = self.nodes[name]
        node.drained = drained or maintenance
        node.maintenance = maintenance
        node.state = self._derive_state(node)
        self._changed(name)
        await self.store.save_node(node)
        await self.bus.emit("node_state", node=name, data={"state": node.state.value})
        return node

    async def watch_heartbeats(self, on_silent: Callable[[NodeLink], Awaitable[None]]) -> None:
        """Forever: a connected node silent for longer than ``node_timeout`` is cut off."""
        while True:
            await asyncio.sleep(min(1.0, self.node_timeout / 3))
            cutoff = now() - self.node_timeout
            for name, link in list(self.links.items()):
                beat = self.nodes[name].last_heartbeat or 0.0
                if beat < cutoff:
                    log.warning("node %s missed heartbeats for %.1f s", name, now() - beat)
                    await on_silent(link)
