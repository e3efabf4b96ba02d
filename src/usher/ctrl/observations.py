"""The order of what nodes tell the controller about VMs, so an older report never wins.

A node's messages arrive in the order it observed what they say (one WebSocket, sent in
order, the inventory of a hello first). The controller handles them off the link's read
loop, each under its VM's lock, so a report may be applied after a later command's reply
was: a hello's snapshot reconciled after an operation step stopped the VM would record it as
it was before the step. So every message is stamped with a number when it is received
(increasing across all links), the successful reply to a command whose outcome the engine
records as the VM's state marks the VM on that node as known up to its number, and a report
older than what is known of the VM on that node is dropped. (A refused command marks
nothing: the engine records the VM as it was, not as the node said.)
"""

from __future__ import annotations

import itertools


class Observations:
    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._known: dict[str, dict[str, int]] = {}  # vm id -> node -> newest number

    def stamp(self) -> int:
        """The number of a message received now."""
        return next(self._numbers)

    def saw(self, vm_id: str, node: str, number: int) -> None:
        """``node`` told the state of ``vm_id`` in the message numbered ``number``."""
        known = self._known.setdefault(vm_id, {})
        if number > known.get(node, 0):
            known[node] = number

    def is_stale(self, vm_id: str, node: str, number: int) -> bool:
        """Whether a report numbered ``number`` is older than what is known of the VM there."""
        return number < self._known.get(vm_id, {}).get(node, 0)

    def forget(self, vm_id: str) -> None:
        """The VM is gone (destroyed)."""
        self._known.pop(vm_id, None)
