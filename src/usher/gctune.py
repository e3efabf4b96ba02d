"""Garbage-collector settings for Usher's long-running processes (controller, LNM).

Every VM step allocates many short-lived objects (models, rows, events, messages). With
CPython's defaults (a young collection every 700 allocations, older generations every 10 of
the one below) the collector took about a quarter of the controller's CPU in the start
benchmark, most of it in collections of the older generations, which walk every live object:
with 10,000 VMs and 1,000 nodes there are many. So these processes collect the young
generation every :data:`YOUNG` allocations and the older ones far less often, and freeze what
exists once they have started (modules, settings) out of every scan. Reference cycles are
still collected, later; Usher's records themselves hold none.
"""

from __future__ import annotations

import gc

YOUNG = 100_000
"""Allocations (less deallocations) between two collections of the youngest generation."""
OLDER = (50, 100)
"""Collections of the generation below between two of the middle and of the oldest."""


def tune() -> None:
    """Apply the settings above to this process; call once, after start-up imports."""
    gc.freeze()
    gc.set_threshold(YOUNG, *OLDER)
