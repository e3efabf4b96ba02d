"""The local node manager: dials the controller, runs its commands through a VMM driver.

One LNM per physical host. It keeps a WebSocket to the controller open (reconnecting with
backoff), says hello with its capacity, labels and every VM its driver runs, sends heartbeats
with usage, answers each command, and reports VM state changes the driver notices on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from usher import wire
from usher.bounds import MAX_LINK_MESSAGE, NAME_RE
from usher.model import VMState
from usher.vmm.base import DomainInfo, Driver, DriverError, Guest

log = logging.getLogger("usher.lnm")
CREDENTIAL_FILE = "node.credential"  # in the LNM's state dir, mode 0600
INVENTORY_CHUNK = 500
"""VMs per message of the inventory a hello starts (the rest follow in ``inventory``
messages): no message grows with the number of VMs a node runs."""
CONSOLE_REPLY = 256 * 1024
"""Most console bytes one ``console`` reply carries (ask again from its ``next``)."""
MAX_OFFSET = 2**53
REFUSED_CODE = 4001
"""The close code of a controller that refuses this node (the reason says why)."""


class Refused(Exception):
    """The controller refused this LNM (bad credential, bad name): retrying will not help."""


@dataclass
class LNMConfig:
    ctrl_url: str
    name: str
    credential_file: Path
    vcpus: int
    memory_mb: int
    labels: dict[str, str] = field(default_factory=dict)
    migration_host: str = "127.0.0.1"
    backoff_max: float = 10.0
    join_token: str | None = None
    ca_file: str | None = None

    def secret(self) -> str | None:
        """This node's credential once it has one, else the join token."""
        if self.credential_file.exists():
            return self.credential_file.read_text().strip()
        return self.join_token

    def save_credential(self, credential: str) -> None:
        fd = os.open(self.credential_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(credential + "\n")


def ws_url(ctrl_url: str) -> str:
    """``http://host:port`` → ``ws://host:port/v1/lnm`` (and https → wss)."""
    base = ctrl_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/v1/lnm"


class LNM:
    def __init__(self, config: LNMConfig, driver: Driver) -> None:
        self.config = config
        self.driver = driver
        driver.on_state_change = self._driver_saw
        self._ws: ClientConnection | None = None
        self._busy: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._commands: dict[str, asyncio.Task[Any]] = {}  # running commands, by id
        self._cancelled: set[str] = set()  # ids of commands a `cancel` command cancelled
        self._cpu_seen: tuple[float, float] | None = None
        self._send_lock = asyncio.Lock()  # one message at a time, in the order observed
        self.connected = asyncio.Event()

    # --- the link ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stay connected until ``stop`` is set, reconnecting with exponential backoff."""
        stop = stop or asyncio.Event()
        await self.driver.open()
        delay = 0.2
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._session(stop)
                except Refused:
                    raise
                except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                    log.warning("controller link: %s", exc or type(exc).__name__)
                except Exception:  # nothing a controller sends may end this process
                    log.exception("controller link failed; reconnecting")
                if time.monotonic() - started > 10:
                    delay = 0.2
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random()))
                delay = min(delay * 2, self.config.backoff_max)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.driver.close()

    async def _session(self, stop: asyncio.Event) -> None:
        secret = self.config.secret()
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        url = ws_url(self.config.ctrl_url)
        tls = (
            ssl.create_default_context(cafile=self.config.ca_file)
            if url.startswith("wss:")
            else None
        )
        async with connect(
            url,
            ssl=tls,
            additional_headers=headers,
            max_size=MAX_LINK_MESSAGE,
            ping_interval=20,
            compression=None,  # small JSON messages: deflating them costs more than it saves
        ) as ws:
            try:
                await self._linked(ws, stop)
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == REFUSED_CODE:
                    raise Refused(exc.rcvd.reason or "refused") from None
                raise
            finally:
                self.connected.clear()
                self._ws = None

    async def _linked(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        """Say hello on a new link, wait for the welcome, then serve it until it ends."""
        # the inventory is taken and sent under the send lock: whatever the driver reports
        # after it is sent after it, so the controller reads reports in the order observed
        async with self._send_lock:
            for message in await self._hello():
                await ws.send(wire.dumps(message))
            self._ws = ws
        try:
            welcome = wire.loads(await asyncio.wait_for(ws.recv(), 15))
            if not isinstance(welcome, dict):
                raise ValueError("not an object")
            interval = float(welcome.get("heartbeat", 1))
        except (ValueError, TypeError) as exc:
            raise websockets.InvalidMessage(f"no welcome: {exc}") from None
        if welcome.get("type") == "refused":
            raise Refused(str(welcome.get("reason", "refused"))[:500])
        if "credential" in welcome:
            self.config.save_credential(str(welcome["credential"]))
            log.info("saved this node's credential in %s", self.config.credential_file)
        self.connected.set()
        log.info("joined controller %s as node %s", self.config.ctrl_url, self.config.name)
        beat = asyncio.create_task(self._heartbeats(ws, interval))
        stopper = asyncio.create_task(stop.wait())
        reader = asyncio.create_task(self._read(ws))
        try:
            done, _ = await asyncio.wait({reader, stopper}, return_when="FIRST_COMPLETED")
            if reader in done:
                reader.result()
        finally:
            for task in (reader, beat, stopper):
                task.cancel()

    async def _hello(self) -> list[dict[str, Any]]:
        """The hello and the inventory that follows it: every VM the driver has, in pieces
        of :data:`INVENTORY_CHUNK` (``more`` says whether another follows)."""
        vms = [_summary(d) for d in await self.driver.list()]
        chunks = [vms[i : i + INVENTORY_CHUNK] for i in range(0, len(vms), INVENTORY_CHUNK)]
        chunks = chunks or [[]]
        hello = {
            "type": "hello",
            "node": self.config.name,
            "driver": self.driver.name,
            "capacity": {"vcpus": self.config.vcpus, "memory_mb": self.config.memory_mb},
            "labels": self.config.labels,
            "capabilities": sorted(c.value for c in self.driver.capabilities),
            "vms": chunks[0],
            "more": len(chunks) > 1,
        }
        rest = [
            {"type": "inventory", "vms": chunk, "more": n < len(chunks) - 1}
            for n, chunk in enumerate(chunks[1:], start=1)
        ]
        return [hello, *rest]

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                msg = wire.loads(raw)
                kind = msg.get("type") if isinstance(msg, dict) else None
            except ValueError as exc:
                log.warning("ignoring a message that is no JSON: %s", str(exc)[:200])
                continue
            if kind == "command":
                self._spawn(self._run_command(ws, msg), str(msg.get("id"))[:100])
            elif kind == "refused":
                raise Refused(str(msg.get("reason", "refused"))[:500])
            else:
                log.warning("ignoring a message of unknown type %r", str(kind)[:40])

    def _spawn(self, coro: Any, cmd_id: str | None = None) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if cmd_id is not None:
            self._commands[cmd_id] = task
            task.add_done_callback(lambda _: self._commands.pop(cmd_id, None))

    async def _send(self, msg: dict[str, Any], ws: ClientConnection | None = None) -> None:
        """Send ``msg`` on ``ws`` (the current link if None), in order with the inventory."""
        async with self._send_lock:
            ws = ws or self._ws
            if ws is None:
                return  # not connected: the next hello re-reports everything
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(wire.dumps(msg))

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        interval = min(max(interval, 0.05), 60.0) if math.isfinite(interval) else 1.0
        while True:
            await self._send({"type": "heartbeat", "usage": await self.usage()}, ws)
            await asyncio.sleep(interval)

    # --- commands ----------------------------------------------------------------------

    async def _run_command(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        """Run one command and answer it; whatever it holds, the answer is a reply (an
        error reply for a malformed command), never the end of this process."""
        vm_id = msg.get("vm_id")
        valid_vm = vm_id is None or (isinstance(vm_id, str) and NAME_RE.fullmatch(vm_id))
        if not valid_vm:
            vm_id = None
        if vm_id:
            self._busy[vm_id] = self._busy.get(vm_id, 0) + 1
        try:
            action, args, guest = msg.get("action"), msg.get("args"), msg.get("guest")
            if not valid_vm:
                raise DriverError(f"node {self.config.name}: malformed VM id")
            if not isinstance(action, str) or not isinstance(args, dict | None):
                raise DriverError(f"node {self.config.name}: malformed command")
            if not isinstance(guest, dict | None):
                raise DriverError(f"node {self.config.name}: malformed guest")
            result = await self.execute(action, vm_id, guest, args)
            reply = {"type": "reply", "id": msg.get("id"), "ok": True, "result": result}
        except DriverError as exc:
            reply = {"type": "reply", "id": msg.get("id"), "ok": False, "error": str(exc)}
        except asyncio.CancelledError:
            if msg.get("id") not in self._cancelled:
                raise
            self._cancelled.discard(msg["id"])
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the reply still goes out
            error = f"node {self.config.name}: {msg.get('action')} cancelled"
            reply = {"type": "reply", "id": msg.get("id"), "ok": False, "error": error}
        except Exception as exc:
            log.warning("command %r on %s failed: %r", msg.get("action"), vm_id, exc)
            reply = {
                "type": "reply",
                "id": msg.get("id"),
                "ok": False,
                "error": f"node {self.config.name}: {msg.get('action')!r} failed: {exc!r}"[:2000],
            }
        finally:
            if vm_id:
                self._busy[vm_id] -= 1
                if not self._busy[vm_id]:
                    del self._busy[vm_id]
        try:
            text = wire.dumps(reply)
        except ValueError as exc:  # a result JSON cannot carry
            text = wire.dumps({**reply, "ok": False, "result": None, "error": str(exc)[:500]})
        if len(text) > MAX_LINK_MESSAGE:
            text = wire.dumps({**reply, "ok": False, "result": None, "error": "answer too large"})
        async with self._send_lock:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(text)
        if vm_id and self._ws is not ws:
            await self._report(vm_id)

    async def _report(self, vm_id: str) -> None:
        """Tell the controller now linked what became of a VM whose command outlived the
        link it came on (the controller that asked is gone, and its reply with it)."""
        try:
            dom = await self.driver.info(vm_id)
        except DriverError:  # the command ended it (a destroy), or it is gone otherwise
            await self._send({"type": "gone", "vm_id": vm_id})
            return
        await self._send_state(vm_id, dom.state, dom.reason)

    async def execute(
        self,
        action: str,
        vm_id: str | None,
        guest: dict[str, Any] | None,
        args: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Run one controller command through the driver; the answer is JSON-ready."""
        args = args or {}
        d = self.driver

        def need_guest() -> Guest:
            if guest is None:
                raise DriverError(f"{action} needs the VM's description")
            return Guest.model_validate(guest)

        def vm() -> str:
            if not vm_id:
                raise DriverError(f"{action} needs a VM id")
            return vm_id

        def dom(info: DomainInfo) -> dict[str, Any]:
            return info.model_dump(mode="json")

        def offset() -> int:
            value = args.get("offset", 0)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= MAX_OFFSET
            ):
                raise DriverError(f"console offset must be 0 to {MAX_OFFSET}")
            return value

        def seconds(key: str, default: float | None) -> float | None:
            value = args.get(key, default)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DriverError(f"{action}: {key} must be a number of seconds")
            if not 0 <= value <= 86400 * 7:
                raise DriverError(f"{action}: {key} must be 0 to 604800 seconds")
            return float(value)

        handlers: dict[str, Callable[[], Any]] = {
            "start": lambda: d.start(need_guest()),
            "stop": lambda: d.stop(
                vm(), timeout=seconds("timeout", None), hard=args.get("hard") is True
            ),
            "destroy": lambda: d.destroy(vm()),
            "fence": lambda: d.fence(vm()),
            "pause": lambda: d.pause(vm()),
            "resume": lambda: d.resume(vm()),
            "reboot": lambda: d.reboot(vm()),
            "cycle": lambda: d.cycle(need_guest()),
            "info": lambda: d.info(vm()),
            "prepare_incoming": lambda: d.prepare_incoming(
                need_guest(), self.config.migration_host
            ),
            "migrate": lambda: d.migrate(
                vm(), str(args.get("uri"))[:1000], timeout=seconds("timeout", 120) or 120.0
            ),
            "finish_incoming": lambda: d.finish_incoming(vm()),
            "abort_incoming": lambda: d.abort_incoming(vm()),
            "settle_incoming": lambda: self._settle_incoming(vm()),
            "console": lambda: d.console_log(vm(), offset=offset()),
            "cancel": lambda: self._cancel(str(args.get("command"))),
        }
        handler = handlers.get(action)
        if handler is None:
            raise DriverError(f"node {self.config.name} does not know the command {action!r}")
        answer = await handler()
        if isinstance(answer, DomainInfo):
            return dom(answer)
        if action == "prepare_incoming":
            return {"uri": answer}
        if action == "console":
            chunk = answer[:CONSOLE_REPLY]
            return {"data": chunk.decode("utf-8", "replace"), "next": offset() + len(chunk)}
        if isinstance(answer, dict):
            return answer
        if answer is not None and hasattr(answer, "model_dump"):
            return answer.model_dump(mode="json")
        return {}

    async def _settle_incoming(self, vm_id: str) -> dict[str, Any]:
        """The ``settle_incoming`` command: ``{"settled": "running", "vm": <domain>}`` or
        ``{"settled": "dropped"}``."""
        info = await self.driver.settle_incoming(vm_id)
        if info is None:
            return {"settled": "dropped"}
        return {"settled": "running", "vm": info.model_dump(mode="json")}

    async def _cancel(self, cmd_id: str) -> dict[str, Any]:
        """The ``cancel`` command: cancel the running command ``cmd_id`` (its driver call
        cleans up; a migration is called off and the VM stays here); it replies "cancelled"."""
        task = self._commands.get(cmd_id)
        if task is None or task.done():
            return {"cancelled": False}
        self._cancelled.add(cmd_id)
        task.cancel()
        return {"cancelled": True}

    # --- reports -----------------------------------------------------------------------

    async def _driver_saw(self, vm_id: str, state: VMState, reason: str | None) -> None:
        """A change the driver noticed on its own; changes made by a command are in its reply."""
        if vm_id not in self._busy:
            await self._send_state(vm_id, state, reason)

    async def _send_state(self, vm_id: str, state: VMState, reason: str | None) -> None:
        await self._send({"type": "state", "vm_id": vm_id, "state": state.value, "reason": reason})

    async def usage(self) -> dict[str, Any]:
        """What this node's VMs reserve and consume now."""
        doms = await self.driver.list()
        live = [d for d in doms if d.state in (VMState.RUNNING, VMState.PAUSED)]
        cpu_total = sum(d.cpu_seconds for d in doms)
        t = time.monotonic()
        cpu_percent = 0.0
        if self._cpu_seen is not None and t > self._cpu_seen[0]:
            cpu_percent = max(0.0, (cpu_total - self._cpu_seen[1]) / (t - self._cpu_seen[0]) * 100)
        self._cpu_seen = (t, cpu_total)
        return {
            "vcpus": sum(d.spec.vcpus for d in live),
            "memory_mb": sum(d.spec.memory_mb for d in live),
            "vms": len(live),
            "cpu_percent": round(cpu_percent, 2),
            "memory_used_mb": int(sum(d.memory_used_mb for d in live)),
            "per_vm": {
                d.id: {
                    "cpu_seconds": round(d.cpu_seconds, 3),
                    "memory_used_mb": round(d.memory_used_mb, 1),
                }
                for d in live
            },
        }


def _summary(dom: DomainInfo) -> dict[str, Any]:
    """What the controller reconciles of a VM a node has (not its spec: a node's messages
    do not grow with what users store in their VMs)."""
    reason = dom.reason[:500] if dom.reason else None
    return {"id": dom.id, "name": dom.name, "state": dom.state.value, "reason": reason}
