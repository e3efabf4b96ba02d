"""The state dir's lock: one controller (or one ``usher restore``) at a time on a state dir.

The controller takes an exclusive ``flock`` on ``<state-dir>/ctrl.lock`` when it starts and
holds it until it stops (the kernel drops it when the process dies, kill -9 included); the
file also names the holder's pid, for the message of whoever finds it taken.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "ctrl.lock"


class StateLocked(Exception):
    """Another process holds the state dir's lock; the message says which."""


class StateLock:
    def __init__(self, state_dir: Path, holder: str) -> None:
        self.path = state_dir / LOCK_FILE
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StateLocked` at once if another process has it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateLocked(
                f"the state dir {self.path.parent} is in use by {who} (it holds {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder} (pid {os.getpid()})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the flock
            self._fd = None
