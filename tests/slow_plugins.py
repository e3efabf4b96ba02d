"""A plugin for the metrics test (loaded by the controller as ``slow_plugins:SlowSync``)."""

from __future__ import annotations

import time

from usher import hookimpl
from usher.model import Event


class SlowSync:
    """A synchronous notification hook (run in a thread) that outlasts the notification
    timeout on each ``register`` event: the host gives up waiting, the call goes on."""

    @hookimpl
    def usher_event(self, event: Event) -> None:
        if event.name == "register":
            time.sleep(1.5)
