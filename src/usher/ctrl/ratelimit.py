"""Counting what a key (a client address, a user name) did in the last minute, to refuse or
stay quiet about more than a few: failed logins, refused node connections."""

from __future__ import annotations

import time
from collections.abc import Hashable


class Window:
    """At most ``limit`` hits per key in each ``period`` (a fixed window per key).

    ``max_keys`` bounds the memory an attacker with many addresses can make it use: when
    there are more keys, the oldest windows are forgotten first.
    """

    def __init__(self, limit: int, period: float = 60.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.period = period
        self.max_keys = max_keys
        self._windows: dict[Hashable, list[float]] = {}  # key -> [window start, count]

    def _window(self, key: Hashable) -> list[float]:
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.period:
            if window is None and len(self._windows) >= self.max_keys:
                for old in sorted(self._windows, key=lambda k: self._windows[k][0])[
                    : self.max_keys // 10 or 1
                ]:
                    del self._windows[old]
            window = self._windows[key] = [now, 0.0]
        return window

    def hit(self, key: Hashable) -> int:
        """Count one hit of ``key``; how many it had in this window, this one included."""
        window = self._window(key)
        window[1] += 1
        return int(window[1])

    def over(self, key: Hashable) -> bool:
        """Whether ``key`` has used up its hits of this window."""
        return self._window(key)[1] >= self.limit

    def retry_after(self, key: Hashable) -> int:
        """Seconds until ``key``'s window ends."""
        window = self._windows.get(key)
        if window is None:
            return 0
        return max(1, int(self.period - (time.monotonic() - window[0])) + 1)
