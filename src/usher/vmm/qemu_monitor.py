"""One QMP connection to one QEMU process, over the ``qemu.qmp`` library.

QEMU's QMP socket serves one client at a time; the driver holds that connection for as long as
the guest runs. It doubles as the quickest way to notice that QEMU ended: the kernel closes
the socket the moment the process exits, and a ``SHUTDOWN`` event just before tells why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

from qemu.qmp import EventListener, ExecuteError, QMPClient, QMPError, Runstate

from usher.vmm.base import DriverError

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30.0
"""Seconds a QMP command may take before it counts as failed."""


class MonitorError(DriverError):
    """A QMP command failed, or QEMU did not answer."""


def unix_socket(path: str) -> socket.socket:
    """A socket connected to ``path``, however long the path: the kernel refuses socket
    addresses over 107 bytes, so connect through ``/proc/self/fd/<dir fd>/<name>``."""
    directory = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{os.path.basename(path)}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(directory)
    return sock


class Monitor:
    """A QMP session with one QEMU; ``shutdown`` holds the data of its ``SHUTDOWN`` event."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._client = QMPClient(name)
        self._shutdowns = EventListener("SHUTDOWN")
        self._client.register_listener(self._shutdowns)

    @classmethod
    async def connect(cls, path: str, name: str, *, timeout: float = 10.0) -> Monitor:
        """Open a session on the QMP socket at ``path``."""
        monitor = cls(name)
        try:
            sock = unix_socket(path)
            await asyncio.wait_for(monitor._client.connect(sock), timeout)
        except (OSError, QMPError, TimeoutError) as exc:
            await monitor.close()
            raise MonitorError(f"cannot reach QEMU's QMP socket {path}: {exc}") from exc
        return monitor

    @property
    def connected(self) -> bool:
        return self._client.runstate is Runstate.RUNNING

    @property
    def shutdown(self) -> dict[str, Any] | None:
        """``{"guest": bool, "reason": str}`` once QEMU announced it shuts down."""
        history = self._shutdowns.history
        return dict(history[0].get("data", {})) if history else None

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 0
    ) -> Any:
        """Run ``command``; its ``return`` value. Raises :class:`MonitorError`."""
        timeout = timeout or COMMAND_TIMEOUT
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # comes as the answer does (the caller is then never told it was called off)
            async with asyncio.timeout(timeout):
                return await self._client.execute(command, arguments)
        except ExecuteError as exc:
            raise MonitorError(f"QEMU refused {command}: {exc}") from exc
        except (QMPError, OSError, EOFError) as exc:
            raise MonitorError(f"QEMU did not answer {command}: QMP connection lost") from exc
        except TimeoutError:
            raise MonitorError(f"QEMU did not answer {command} within {timeout:g} s") from None

    @contextlib.contextmanager
    def listen(self, *names: str) -> Iterator[EventListener]:
        """Queue QEMU's events named ``names`` while inside (all of them in its ``history``)."""
        listener = self.listener(*names)
        try:
            yield listener
        finally:
            self.unlisten(listener)

    def listener(self, *names: str) -> EventListener:
        """Queue QEMU's events named ``names`` from now on, until :meth:`unlisten`."""
        listener = EventListener(names)
        self._client.register_listener(listener)
        return listener

    def unlisten(self, listener: EventListener) -> None:
        """Stop queueing events for ``listener``; harmless if it was not listening here."""
        with contextlib.suppress(ValueError):
            self._client.remove_listener(listener)

    async def wait_closed(self) -> None:
        """Return when the connection is gone (QEMU ended or hung up)."""
        while self.connected:
            await self._client.runstate_changed()

    async def close(self) -> None:
        """Hang up; harmless when QEMU already did."""
        if self._client.runstate is not Runstate.IDLE:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
