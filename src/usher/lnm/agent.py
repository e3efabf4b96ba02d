"""The local node manager: dials the controller, runs its commands through a VMM driver.

One LNM per physical host. It keeps a WebSocket to the controller open (reconnecting with
backoff), says hello with its capacity, labels and every VM its driver runs, sends heartbeats
with usage, answers each command, and reports VM state changes the driver notices on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
from usher.model import VMState
from usher.vmm.base import DomainInfo, Driver, DriverError, Guest

log = logging.getLogger("usher.lnm")
CREDENTIAL_FILE = "node.credential"  # in the LNM's state dir, mode 0600


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
            max_size=2**24,
            ping_interval=20,
            compression=None,  # small JSON messages: deflating them costs more than it saves
        ) as ws:
            await ws.send(wire.dumps(await self._hello()))
            welcome = wire.loads(await asyncio.wait_for(ws.recv(), 15))
            if welcome.get("type") == "refused":
                raise Refused(welcome.get("reason", "refused"))
            if "credential" in welcome:
                self.config.save_credential(str(welcome["credential"]))
                log.info("saved this node's credential in %s", self.config.credential_file)
            self._ws = ws
            self.connected.set()
            log.info("joined controller %s as node %s", self.config.ctrl_url, self.config.name)
            beat = asyncio.create_task(self._heartbeats(ws, float(welcome.get("heartbeat", 1))))
            stopper = asyncio.create_task(stop.wait())
            try:
                reader = asyncio.create_task(self._read(ws))
                done, _ = await asyncio.wait({reader, stopper}, return_when="FIRST_COMPLETED")
                if reader in done:
                    reader.result()
                else:
                    reader.cancel()
            finally:
                self.connected.clear()
                self._ws = None
                beat.cancel()
                stopper.cancel()

    async def _hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "node": self.config.name,
            "driver": self.driver.name,
            "capacity": {"vcpus": self.config.vcpus, "memory_mb": self.config.memory_mb},
            "labels": self.config.labels,
            "capabilities": sorted(c.value for c in self.driver.capabilities),
            "vms": [d.model_dump(mode="json") for d in await self.driver.list()],
        }

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            msg = wire.loads(raw)
            if msg.get("type") == "command":
                self._spawn(self._run_command(ws, msg), str(msg.get("id")))
            elif msg.get("type") == "refused":
                raise Refused(msg.get("reason", "refused"))

    def _spawn(self, coro: Any, cmd_id: str | None = None) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if cmd_id is not None:
            self._commands[cmd_id] = task
            task.add_done_callback(lambda _: self._commands.pop(cmd_id, None))

    async def _send(self, msg: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return  # not connected: the next hello re-reports everything
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(wire.dumps(msg))

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        while True:
            await ws.send(wire.dumps({"type": "heartbeat", "usage": await self.usage()}))
            await asyncio.sleep(interval)

    # --- commands ----------------------------------------------------------------------

    async def _run_command(self, ws: ClientConnection, msg: dict[str, Any]) -> None:
        vm_id = msg.get("vm_id")
        if vm_id:
            self._busy[vm_id] = self._busy.get(vm_id, 0) + 1
        try:
            result = await self.execute(msg["action"], vm_id, msg.get("guest"), msg.get("args"))
            reply = {"type": "reply", "id": msg["id"], "ok": True, "result": result}
        except DriverError as exc:
            reply = {"type": "reply", "id": msg["id"], "ok": False, "error": str(exc)}
        except asyncio.CancelledError:
            if msg["id"] not in self._cancelled:
                raise
            self._cancelled.discard(msg["id"])
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the reply still goes out
            error = f"node {self.config.name}: {msg.get('action')} cancelled"
            reply = {"type": "reply", "id": msg["id"], "ok": False, "error": error}
        except Exception as exc:
            log.exception("command %s on %s failed", msg.get("action"), vm_id)
            reply = {
                "type": "reply",
                "id": msg["id"],
                "ok": False,
                "error": f"node {self.config.name}: internal error: {exc!r}",
            }
        finally:
            if vm_id:
                self._busy[vm_id] -= 1
                if not self._busy[vm_id]:
                    del self._busy[vm_id]
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(wire.dumps(reply))
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

        handlers: dict[str, Callable[[], Any]] = {
            "start": lambda: d.start(need_guest()),
            "stop": lambda: d.stop(vm(), timeout=args.get("timeout"), hard=args.get("hard", False)),
            "destroy": lambda: d.destroy(vm()),
            "pause": lambda: d.pause(vm()),
            "resume": lambda: d.resume(vm()),
            "reboot": lambda: d.reboot(vm()),
            "cycle": lambda: d.cycle(need_guest()),
            "info": lambda: d.info(vm()),
            "prepare_incoming": lambda: d.prepare_incoming(
                need_guest(), self.config.migration_host
            ),
            "migrate": lambda: d.migrate(
                vm(), str(args["uri"]), timeout=float(args.get("timeout", 120))
            ),
            "finish_incoming": lambda: d.finish_incoming(vm()),
            "abort_incoming": lambda: d.abort_incoming(vm()),
            "settle_incoming": lambda: self._settle_incoming(vm()),
            "console": lambda: d.console_log(vm(), offset=int(args.get("offset", 0))),
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
            offset = int(args.get("offset", 0))
            return {"data": answer.decode("utf-8", "replace"), "next": offset + len(answer)}
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
