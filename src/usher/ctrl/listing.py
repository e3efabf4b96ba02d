"""What the store keeps in memory to answer VM listings without a model per VM: every VM's
place in listing order (its row's ``seq``) and its JSON, as last committed or read."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from usher import wire

Text = tuple[str, str]
"""A VM's ``(id, JSON)``."""


def text_of(row: Mapping[str, Any]) -> Text:
    """A ``vms`` row (without ``seq``) as the JSON a listing serves."""
    return row["id"], wire.dumps(row)


class Listing:
    """Listing order and JSON of the VM records.

    The store is the only writer of VM records and tells this what it commits: the order
    of every VM (:meth:`place`, :meth:`remove`), so a page of all VMs needs no query, and
    the JSON of those written or read since the store opened (:meth:`remember`), so a page
    serializes only rows it has not seen.
    """

    # removed entries are dropped from the order once they are this many and half of it
    COMPACT_AFTER = 1024

    def __init__(self) -> None:
        self._json: dict[str, str] = {}
        self._ids: dict[int, str] = {}  # seq -> id of every VM record
        self._seqs: dict[str, int] = {}
        self._order: list[int] = []  # sorted seqs; removed ones stay until compacted

    def __len__(self) -> int:
        return len(self._ids)

    def place(self, rows: Iterable[tuple[int, str]]) -> None:
        """VM records committed: ``(seq, id)`` each."""
        for seq, vm_id in rows:
            self._ids[seq] = vm_id
            self._seqs[vm_id] = seq
            order = self._order
            if not order or seq > order[-1]:
                order.append(seq)
                continue
            at = bisect.bisect_left(order, seq)
            if at == len(order) or order[at] != seq:  # (a removed VM's seq may come back)
                order.insert(at, seq)

    def remove(self, vm_id: str) -> None:
        """A VM record deleted."""
        self._json.pop(vm_id, None)
        seq = self._seqs.pop(vm_id, None)
        if seq is not None:
            del self._ids[seq]
        garbage = len(self._order) - len(self._ids)
        if garbage > self.COMPACT_AFTER and garbage > len(self._ids):
            self._order = [s for s in self._order if s in self._ids]

    def page(self, after: int | None, limit: int) -> tuple[list[tuple[int, str]], bool]:
        """Up to ``limit`` ``(seq, id)`` in order after the ``seq`` ``after``, and whether
        more follow."""
        order, ids, found = self._order, self._ids, []
        start = 0 if after is None else bisect.bisect_right(order, after)
        for seq in itertools.islice(order, start, None):  # (no copy of the rest)
            vm_id = ids.get(seq)
            if vm_id is not None:
                if len(found) == limit:
                    return found, True
                found.append((seq, vm_id))
        return found, False

    def remember(self, texts: Iterable[Text]) -> None:
        """VMs' JSON as committed (or read)."""
        self._json.update(texts)

    def remember_row(self, row: Mapping[str, Any]) -> str:
        """One row as read from the database (without ``seq``); the JSON held for it: a
        commit remembered while the row was being read is newer than the row, and stays."""
        vm_id, text = text_of(row)
        return self._json.setdefault(vm_id, text)

    def known(self, ids: Iterable[str]) -> dict[str, str]:
        """The JSON held of each of ``ids`` (others are left out: read them)."""
        held = self._json
        return {vm_id: held[vm_id] for vm_id in ids if vm_id in held}
