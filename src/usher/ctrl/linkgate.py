"""Admission of LNM links in waves, so that a controller restart is not a congestion collapse.

After a restart every LNM dials at once. Each link's handshake (TLS, the upgrade, the hello,
its credential, the node's record, the reconciliation of its VMs) takes the controller's
time; taking thousands at once only makes all of them slow, and LNMs that time out dial again
and add to the pile. So a bounded number of links are admitted at a time (``in_flight``);
a few more wait their turn before the WebSocket upgrade, as many as the gate expects to admit
within ``max_wait`` seconds (and at least :data:`QUEUE_FLOOR` waves); any other is answered
``503`` with a ``Retry-After`` at once, which costs the controller a TLS handshake and no
more. Each refused LNM is given its own time to come back, one slot after another at the rate
links are being admitted, so the refused come back spread out rather than all together again.

The rate is measured: an admission holds its place for a while (``hold``, a moving average),
so ``in_flight / hold`` links are admitted a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

HOLD_SMOOTHING = 0.2
"""Weight of the newest admission in the moving average of how long one holds its place."""
QUEUE_FLOOR = 4
"""Links that may wait, at least, in waves of ``in_flight``: in the first seconds after a
restart the loop is busy with every TLS handshake at once and an admission holds its place
long, which alone would send away links that would have waited less than a comeback."""


@dataclass
class GateStats:
    """What the gate did since the controller started."""

    admitted: int = 0
    deferred: int = 0
    waited: int = 0
    most_waiting: int = 0


@dataclass
class Place:
    """An admitted link's place in the wave; :meth:`release` frees it (at most once)."""

    gate: LinkGate
    since: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.gate._released(time.monotonic() - self.since)


class LinkGate:
    """Admits LNM links ``in_flight`` at a time (module doc)."""

    def __init__(self, in_flight: int = 128, max_wait: float = 3.0, hold: float = 0.05) -> None:
        if in_flight < 1 or max_wait <= 0 or hold <= 0:
            raise ValueError("in_flight ≥ 1, max_wait > 0 and hold > 0")
        self.in_flight = in_flight
        self.max_wait = max_wait
        self.hold = hold  # seconds an admission holds its place (moving average)
        self.stats = GateStats()
        self._places = asyncio.Semaphore(in_flight)
        self._busy = 0
        self._waiting = 0
        self._next_retry = 0.0  # monotonic time of the next comeback slot handed out

    @property
    def rate(self) -> float:
        """Links admitted a second, as measured."""
        return self.in_flight / self.hold

    def retry_after(self) -> float | None:
        """None if a new link may wait for its place; otherwise how many seconds it should
        come back after (each refused link gets the next free slot, ``1 / rate`` apart,
        after those waiting now are through)."""
        if self._busy < self.in_flight and not self._waiting:
            return None
        if self._waiting < max(self.rate * self.max_wait, QUEUE_FLOOR * self.in_flight):
            return None
        now = time.monotonic()
        slot = max(self._next_retry, now + self._waiting / self.rate)
        self._next_retry = slot + 1 / self.rate
        self.stats.deferred += 1
        return slot - now

    async def enter(self) -> Place:
        """Wait for a place in the wave (call :meth:`retry_after` first)."""
        self._waiting += 1
        self.stats.most_waiting = max(self.stats.most_waiting, self._waiting)
        if self._busy >= self.in_flight:
            self.stats.waited += 1
        try:
            await self._places.acquire()
        finally:
            self._waiting -= 1
        self._busy += 1
        self.stats.admitted += 1
        return Place(self)

    def _released(self, held: float) -> None:
        self._busy -= 1
        self._places.release()
        self.hold += HOLD_SMOOTHING * (max(held, 1e-3) - self.hold)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds (HTTP has no finer unit), at least 1."""
    return str(max(1, math.ceil(seconds)))
