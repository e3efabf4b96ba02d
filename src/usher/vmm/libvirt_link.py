"""The ``libvirt`` driver's connection to its daemon: blocking calls off the event loop, and
the daemon's domain events into it.

libvirt-python's calls block (they are RPCs to libvirtd), so each runs in a thread of the
link's own pool. A call the driver is cancelled in cannot be taken back from libvirtd: the
cancellation waits for its answer (:meth:`Link.call`), so the caller knows what happened
before it cleans up and re-raises. libvirt delivers events (and keepalives) through an event
loop of its own: one thread per process runs libvirt's default implementation, and each
link hands the lifecycle events of its connection to its asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt

from usher.vmm.base import DriverError

T = TypeVar("T")
log = logging.getLogger(__name__)
LifecycleHandler = Callable[[str, int, int], None]
"""``handler(domain_name, event, detail)``, called in the asyncio loop."""

THREADS = 32
"""Calls of one link at once (a live migration holds one for its whole length)."""

_events_started = False
_events_lock = threading.Lock()


def _run_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def _start_event_thread() -> None:
    """libvirt's event loop, in a daemon thread: once per process, before any connection."""
    global _events_started
    with _events_lock:
        if not _events_started:
            # errors reach the caller as exceptions; libvirt's default handler also prints
            # each one (every "domain not found" of a lookup) on stderr
            libvirt.registerErrorHandler(lambda _context, _error: None, None)
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=_run_events, name="libvirt-events", daemon=True).start()
            _events_started = True


def message(exc: libvirt.libvirtError) -> str:
    """What libvirt said, without the library's own prefixes."""
    return str(exc.get_error_message() or exc).strip()


class LibvirtFailure(DriverError):
    """A libvirt call failed: libvirt's message, and its error ``code``."""

    def __init__(self, exc: libvirt.libvirtError) -> None:
        super().__init__(message(exc))
        self.code = exc.get_error_code()


class Link:
    """One connection to libvirtd at ``uri``, opened by :meth:`open`. A connection that broke
    (libvirtd restarted, say) fails the call that found it broken, and the next use of
    :attr:`conn` connects again."""

    def __init__(self, uri: str, on_lifecycle: LifecycleHandler) -> None:
        self.uri = uri
        self._on_lifecycle = on_lifecycle
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="libvirt")
        self._conn: libvirt.virConnect | None = None
        self._callback: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broken = False

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise DriverError(f"not connected to libvirt at {self.uri}")
        if self._broken:
            log.warning("the connection to libvirt at %s broke: connecting again", self.uri)
            try:
                self._connect()
            except libvirt.libvirtError as exc:
                raise DriverError(
                    f"cannot connect to libvirt at {self.uri}: {message(exc)}"
                ) from exc
        return self._conn

    def submit(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``function(*args)`` started in a thread of the link's."""
        return asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a thread; a libvirt error raises :class:`LibvirtFailure`.
        Cancelled, it still waits for the call to end (libvirtd carries it out either way),
        then re-raises the cancellation."""
        future = self.submit(function, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise
        except libvirt.libvirtError as exc:
            if self._conn is not None and not self._conn.isAlive():
                self._broken = True
            raise LibvirtFailure(exc) from exc

    def _lifecycle(
        self, _conn: object, dom: libvirt.virDomain, event: int, detail: int, _opaque: object
    ) -> None:
        """libvirt's lifecycle event (in its event thread), handed to the asyncio loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_lifecycle, dom.name(), event, detail)

    def _connect(self) -> None:
        """Open the connection (blocking) and subscribe to every domain's lifecycle events."""
        conn = libvirt.open(self.uri)
        conn.setKeepAlive(5, 3)
        self._callback = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
        )
        old, self._conn, self._broken = self._conn, conn, False
        if old is not None:
            with contextlib.suppress(libvirt.libvirtError):
                old.close()

    async def open(self) -> None:
        """Connect, and subscribe to the lifecycle events of every domain."""
        _start_event_thread()
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._connect)
        except libvirt.libvirtError as exc:
            raise DriverError(f"cannot connect to libvirt at {self.uri}: {message(exc)}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if self._callback is not None:
                    await asyncio.to_thread(conn.domainEventDeregisterAny, self._callback)
                await asyncio.to_thread(conn.close)
        self._pool.shutdown(wait=False)

    async def lookup(self, name: str) -> libvirt.virDomain | None:
        """The domain named ``name``, or None if this daemon has none."""
        try:
            return await self.call(self.conn.lookupByName, name)
        except LibvirtFailure as exc:
            if exc.code == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise DriverError(f"libvirt at {self.uri}: {exc}") from exc
