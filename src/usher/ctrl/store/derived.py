"""What the store keeps in memory of the VM records it commits, in step with every write."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from usher.ctrl.listing import Listing, Text
from usher.ctrl.reservations import ChangeLog, Reservations


class DerivedViews:
    """What the committed VM records reserve per node (for the scheduler; node records that
    change are marked in the same :class:`ChangeLog` by the node registry), and every VM's
    place in listing order and JSON (for the API's listing of every VM)."""

    def __init__(self) -> None:
        self.changes = ChangeLog()
        self.reservations = Reservations(self.changes)
        self.listing = Listing()

    def loaded(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Every VM as read when the store opens (``seq``, ``id`` and what reserves)."""
        rows = list(rows)
        self.reservations.apply(rows)
        self.listing.place((r["seq"], r["id"]) for r in rows)

    def added(
        self, rows: list[dict[str, Any]], placed: Iterable[tuple[str, int]], texts: list[Text]
    ) -> None:
        """New VMs committed: their rows, ``(id, seq)`` as inserted, and their JSON."""
        self.reservations.apply(rows)
        self.listing.place((seq, vm_id) for vm_id, seq in placed)
        self.listing.remember(texts)

    def updated(self, rows: list[dict[str, Any]], texts: list[Text]) -> None:
        """VM updates committed: their rows and JSON."""
        self.reservations.apply(rows)
        self.listing.remember(texts)

    def deleted(self, vm_id: str) -> None:
        self.reservations.forget(vm_id)
        self.listing.remove(vm_id)
