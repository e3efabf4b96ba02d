"""The local node manager: dials the controller, runs its commands through a VMM driver.

One LNM per physical host. It keeps a WebSocket to the controller open (reconnecting with
backoff), says hello with its capacity, labels and every VM its driver runs, sends heartbeats
with usage, answers each command, and reports VM state changes the driver notices on its own.
This module is the link; what it says is in :mod:`usher.lnm.inventory`, how a command becomes a
driver call in :mod:`usher.lnm.commands`, its settings in :mod:`usher.lnm.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from usher import wire
from usher.bounds import MAX_LINK_MESSAGE, NAME_RE
from usher.lnm import inventory
from usher.lnm.commands import Commands
from usher.lnm.config import CREDENTIAL_FILE, LNMConfig, ws_url
from usher.lnm.inventory import INVENTORY_CHUNK, UsageMeter
from usher.model import VMState
from usher.vmm.base import Driver, DriverError

__all__ = ["CREDENTIAL_FILE", "INVENTORY_CHUNK", "LNM", "LNMConfig", "Refused"]

log = logging.getLogger("usher.lnm")
REFUSED_CODE = 4001
"""The close code of a controller that refuses this node (the reason says why)."""


BACKOFF_BASE = 0.25
"""The first reconnect waits up to this long (seconds); each failure doubles the bound."""
NOBODY_CAP = 2.0
"""The most a reconnect waits when nobody listens at the controller's address (a restart):
a refused TCP connection costs the controller nothing, and the sooner the LNM dials again
once it listens, the sooner the node is back; a controller that answers but is busy says
when to come back (``Retry-After``), one that does not answer is backed off from up to
``backoff_max``."""
RETRY_JITTER = 1.0
"""Seconds added at random to a controller's ``Retry-After`` (which is in whole seconds)."""
MAX_RETRY_AFTER = 600.0
"""The longest ``Retry-After`` believed."""
STABLE_LINK = 10.0
"""A link welcomed and up this long ends an outage: the next reconnect starts over."""
OPEN_TIMEOUT = 30.0
"""Seconds for the TCP, TLS and WebSocket handshakes: a controller admitting nodes in waves
may keep a new link waiting for its turn a few seconds before it upgrades it."""


def next_delay(
    attempt: int, cap: float, retry_after: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect number ``attempt`` (0 first): with a controller's
    ``retry_after``, that plus up to :data:`RETRY_JITTER`; otherwise "full jitter", uniform
    between 0 and ``min(cap, BACKOFF_BASE * 2**attempt)``, so that LNMs that lost their link
    at the same moment do not dial again at the same moment."""
    draw = (rng or random).uniform
    if retry_after is not None:
        return retry_after + draw(0, RETRY_JITTER)
    return draw(0, min(cap, BACKOFF_BASE * 2 ** min(attempt, 30)))


def retry_after(exc: InvalidStatus) -> float | None:
    """The ``Retry-After`` of a controller that answered the upgrade with 503 (or 429), in
    seconds; None for any other answer, or a ``Retry-After`` that is no number of seconds."""
    response = exc.response
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(seconds, MAX_RETRY_AFTER) if math.isfinite(seconds) and seconds >= 0 else None


class Refused(Exception):
    """The controller refused this LNM (bad credential, bad name): retrying will not help."""


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
        self._usage = UsageMeter()
        self._driver_commands = Commands(
            driver, node=config.name, migration_host=config.migration_host, cancel=self._cancel
        )
        self._send_lock = asyncio.Lock()  # one message at a time, in the order observed
        self._tls_context: ssl.SSLContext | None = None
        self._joined_at: float | None = None  # when the current link was welcomed
        self.connected = asyncio.Event()

    # --- the link ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stay connected until ``stop`` is set, reconnecting with jittered backoff
        (:func:`next_delay`)."""
        stop = stop or asyncio.Event()
        await self.driver.open()
        attempt = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                busy: float | None = None
                nobody = False
                # an outage is told a few times, then every so often: not once a second
                say = log.warning if attempt < 3 or attempt % 30 == 0 else log.debug
                try:
                    await self._session(stop)
                except Refused:
                    raise
                except InvalidStatus as exc:
                    busy = retry_after(exc)
                    if busy is None:
                        say("controller link: %s", exc)
                    else:
                        log.debug("controller busy: dialling again in %.0f s or so", busy)
                except ConnectionRefusedError as exc:
                    nobody = True
                    say("controller link: %s", exc)
                except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                    say("controller link: %s", exc or type(exc).__name__)
                except Exception:  # nothing a controller sends may end this process
                    log.exception("controller link failed; reconnecting")
                if self._joined_at is not None and time.monotonic() - started > STABLE_LINK:
                    attempt = 0  # the link was up a while: this is a new outage
                self._joined_at = None
                cap = (
                    min(self.config.backoff_max, NOBODY_CAP) if nobody else self.config.backoff_max
                )
                delay = next_delay(attempt, cap, busy)
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.driver.close()

    def _tls(self, url: str) -> ssl.SSLContext | None:
        """The TLS context to dial ``url`` with (made once: each reconnect reuses it)."""
        if not url.startswith("wss:"):
            return None
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context(cafile=self.config.ca_file)
        return self._tls_context

    async def _session(self, stop: asyncio.Event) -> None:
        secret = self.config.secret()
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        url = ws_url(self.config.ctrl_url)
        async with connect(
            url,
            ssl=self._tls(url),
            additional_headers=headers,
            max_size=MAX_LINK_MESSAGE,
            ping_interval=20,
            compression=None,  # small JSON messages: deflating them costs more than it saves
            open_timeout=OPEN_TIMEOUT,
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
        self._joined_at = time.monotonic()
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
        """The hello and the inventory that follows it (:func:`inventory.hello`)."""
        return inventory.hello(self.config, self.driver, await self.driver.list())

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
        return await self._driver_commands.execute(action, vm_id, guest, args)

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
        return self._usage.read(await self.driver.list())
