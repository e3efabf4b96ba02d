"""The ``fake`` driver's guests on disk: a snapshot of the table plus a journal of every change.

``<state_dir>/fake-vms.json`` holds the table as it was at the last compaction;
``fake-vms.journal`` one line per change since, written at once: like a hypervisor's guest, a
change outlives an LNM killed right after it (a line in the page cache survives the process).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TextIO

from usher.vmm.base import DriverError
from usher.vmm.fake_domain import FakeDomain

JOURNAL_MIN = 1000
"""Journal lines before the table is rewritten whole (or twice the number of guests)."""

STATE_FILE = "fake-vms.json"
JOURNAL_FILE = "fake-vms.journal"


class Journal:
    """Keeps ``domains`` (the driver's table, changed in place by :meth:`load`) on disk."""

    def __init__(self, state_dir: str, domains: dict[str, FakeDomain]) -> None:
        self._dir = state_dir
        self._domains = domains
        self._file: TextIO | None = None
        self._lines = 0

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def load(self) -> None:
        """Fill the table from the last snapshot, then every journalled change made after it;
        raises :class:`DriverError` if they do not read."""
        path = self._path(STATE_FILE)
        try:
            with open(path, encoding="utf-8") as file:
                records = {r["id"]: r for r in json.load(file)["vms"]}
            with (
                contextlib.suppress(FileNotFoundError),
                open(self._path(JOURNAL_FILE), encoding="utf-8") as journal,
            ):
                for line in journal:
                    if not line.endswith("\n"):
                        break  # a change cut short by a crash never happened
                    entry = json.loads(line)
                    if "put" in entry:
                        records[entry["put"]["id"]] = entry["put"]
                    else:
                        records.pop(entry["del"], None)
            domains = [FakeDomain.from_json(record) for record in records.values()]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise DriverError(f"cannot read the fake driver's VM table {path}: {exc}") from exc
        self._domains.clear()
        self._domains.update((dom.id, dom) for dom in domains)

    def write(self, dom: FakeDomain, *, removed: bool = False) -> None:
        """Journal one guest's change (or removal) at once; compact now and then."""
        if self._file is None:
            return
        entry = {"del": dom.id} if removed else {"put": dom.to_json()}
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        self._lines += 1
        if self._lines > max(JOURNAL_MIN, 2 * len(self._domains)):
            self.compact()

    def compact(self) -> None:
        """Write the whole table atomically, then start an empty journal."""
        path = self._path(STATE_FILE)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump({"vms": [dom.to_json() for dom in self._domains.values()]}, file)
        os.replace(tmp, path)
        if self._file is not None:
            self._file.close()
        self._file = open(self._path(JOURNAL_FILE), "w", encoding="utf-8")  # noqa: SIM115
        self._lines = 0

    def close(self) -> None:
        """Compact, and write no more."""
        self.compact()
        if self._file is not None:
            self._file.close()
            self._file = None
