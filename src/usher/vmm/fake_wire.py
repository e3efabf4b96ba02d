"""The fake driver's live-migration wire: a real TCP connection from source to target.

The target listens, one server per incoming VM. The source connects, "transfers" for the
migration's latency while watching the connection, then sends ``done <vm_id> <state>`` (the
guest's state as its last bytes left: ``running`` or ``paused``) and waits for ``ok``. The
target answers ``ok`` only if it still holds the incoming VM, and marks it received (in that
state) first. So, as with QEMU, a target that dies, aborts the migration or cannot be
reached makes the source's migration fail and the VM run on at the source.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from usher.vmm.base import DriverError

OK = b"ok\n"
RUNNING, PAUSED = "running", "paused"


def done_line(vm_id: str, paused: bool) -> bytes:
    return f"done {vm_id} {PAUSED if paused else RUNNING}\n".encode()


class Incoming:
    """The listening end of one incoming migration; ``received`` is called when the source
    says it sent everything, with whether the guest was paused then, and answers whether the
    VM was taken."""

    def __init__(self, vm_id: str, received: Callable[[bool], bool]) -> None:
        self.vm_id = vm_id
        self._received = received
        self._server: asyncio.Server | None = None
        self._peers: set[asyncio.StreamWriter] = set()

    async def listen(self, ipv6: bool) -> int:
        """Listen on every IPv4 (or IPv6) address; returns the port."""
        self._server = await asyncio.start_server(self._serve, "::" if ipv6 else "0.0.0.0", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._peers.add(writer)
        try:
            line = await reader.readline()
            paused = next((p for p in (False, True) if line == done_line(self.vm_id, p)), None)
            if paused is not None and self._received(paused):
                writer.write(OK)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._peers.discard(writer)
            writer.close()

    def close(self) -> None:
        """Stop listening and drop connections in progress (the source sees its migration
        fail)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._peers):
            writer.transport.abort()
        self._peers.clear()


async def send(
    host: str,
    port: int,
    vm_id: str,
    transfer: Callable[[], Awaitable[None]],
    paused: Callable[[], bool],
) -> None:
    """Migrate ``vm_id`` to ``host:port``: raise DriverError unless the target took it.
    ``paused`` tells, once ``transfer`` is over, whether the guest arrives paused."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        raise DriverError(f"cannot reach the migration target {host}:{port}: {exc}") from exc
    # the target says nothing before ``done``: a byte or EOF now means it went away
    first = asyncio.ensure_future(reader.read(1))
    moving = asyncio.ensure_future(transfer())
    try:
        await asyncio.wait({first, moving}, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            raise DriverError(f"the migration target {host}:{port} closed the connection")
        moving.result()  # raises a simulated failure of the transfer
        writer.write(done_line(vm_id, paused()))
        await writer.drain()
        answer = await first + await reader.readline()
    except OSError as exc:
        raise DriverError(f"the connection to the migration target broke: {exc}") from exc
    finally:
        for task in (first, moving):
            task.cancel()
        await asyncio.gather(moving, return_exceptions=True)
        writer.transport.abort()
    if answer != OK:
        raise DriverError(f"the migration target {host}:{port} did not take the VM")
