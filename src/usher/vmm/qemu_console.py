"""Typing into a guest's serial console: the ``qemu`` driver's end of the console socket.

A guest's serial port is a QEMU ``socket`` chardev, a Unix socket server in the VM's local
dir (``console.sock``), whose log file is the shared ``console.log``
(:func:`usher.vmm.qemu_argv.qemu_argv`). QEMU appends everything the guest prints to the log
whether or not a client is connected; with none, it drops the output on the socket's side at
once, so a guest nobody types into never waits for a reader.

Input needs a client. The driver connects on a VM's first :meth:`Consoles.write` and keeps the
connection, reading everything QEMU sends on it and dropping it (the log has it all), so the
guest's output never backs up behind a client that does not read. The connection ends with
its QEMU; the next write connects to the QEMU that runs then (after the VM was stopped and
started, on a migration's target, or in an LNM restarted meanwhile, whose closed connection
QEMU noticed at once).
"""

from __future__ import annotations

import asyncio
import contextlib

from usher.vmm.base import DriverError
from usher.vmm.qemu_files import CONSOLE_SOCKET, VMFiles
from usher.vmm.qemu_monitor import unix_socket

WRITE_TIMEOUT = 5.0
"""Seconds QEMU may take to take input before a write fails (a guest that reads nothing)."""
READ_SIZE = 64 * 1024


class ConsoleLink:
    """One connection to a QEMU's console socket: writes input, drains output."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._drainer = asyncio.create_task(self._drain(), name="qemu-console-drain")

    async def _drain(self) -> None:
        """Read and drop what QEMU sends until it hangs up."""
        with contextlib.suppress(OSError):
            while await self._reader.read(READ_SIZE):
                pass
        self._writer.close()

    @property
    def open(self) -> bool:
        return not self._drainer.done() and not self._writer.is_closing()

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT):  # not wait_for: it may lose a cancellation
            await self._writer.drain()

    async def close(self) -> None:
        self._drainer.cancel()
        self._writer.close()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._drainer
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


class Consoles:
    """The console connections of this node's VMs, by VM id, made when first written to."""

    def __init__(self, files: VMFiles) -> None:
        self._files = files
        self._links: dict[str, ConsoleLink] = {}

    async def write(self, vm_id: str, data: bytes) -> None:
        """Hand ``data`` to the guest's serial port; :class:`DriverError` if QEMU does not
        take it within :data:`WRITE_TIMEOUT` or cannot be reached."""
        for attempt in (1, 2):
            link = await self._link(vm_id)
            try:
                await link.write(data)
                return
            except TimeoutError:
                raise DriverError(
                    f"VM {vm_id}: the guest has not read its console input for {WRITE_TIMEOUT:g} s"
                ) from None
            except OSError as exc:  # an earlier QEMU's connection: try the one running now
                await self.drop(vm_id)
                if attempt == 2:
                    raise DriverError(f"VM {vm_id}: its console connection broke: {exc}") from exc

    async def _link(self, vm_id: str) -> ConsoleLink:
        link = self._links.get(vm_id)
        if link is not None and link.open:
            return link
        await self.drop(vm_id)
        try:
            sock = unix_socket(self._files.local(vm_id, CONSOLE_SOCKET))
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except OSError as exc:
            raise DriverError(f"VM {vm_id}: cannot reach its QEMU's console: {exc}") from exc
        link = self._links[vm_id] = ConsoleLink(reader, writer)
        return link

    async def drop(self, vm_id: str) -> None:
        """Close the VM's console connection, if there is one."""
        link = self._links.pop(vm_id, None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        """Close every console connection (the guests run on)."""
        for vm_id in list(self._links):
            await self.drop(vm_id)
