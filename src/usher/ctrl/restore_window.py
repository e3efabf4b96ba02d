"""The window after a restore in which the controller adopts what the nodes kept.

``usher restore`` leaves a marker, ``<state-dir>/restored.json``; the controller that starts
on that state dir reads it, and for ``rejoin_grace`` seconds from its start (the time the
nodes have to dial again) it believes the nodes about the VMs the restored records cannot
know: a VM made after the backup (its node keeps who it belongs to, ``Guest.meta``) is
adopted, and a VM destroyed after it (its node has no copy, its disks are gone from the
shared storage) is removed. Outside that window a node's word never makes or removes a
record. The marker is removed when the window ends, so a later restart does not reopen it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("usher.restore")

MARKER = "restored.json"


def mark_restored(state_dir: Path, backup_created_at: float) -> Path:
    """Leave the marker a restore leaves (mode 0600, written atomically)."""
    path = state_dir / MARKER
    tmp = path.with_name(f".{MARKER}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump({"backup_created_at": backup_created_at, "restored_at": time.time()}, file)
    os.replace(tmp, path)
    return path


class RestoreWindow:
    """Whether the controller runs on a state dir just restored, and until when."""

    def __init__(self, state_dir: Path, grace: float) -> None:
        self.path = state_dir / MARKER
        self.restored = self.path.is_file()
        self.until = time.monotonic() + grace
        if self.restored:
            log.warning(
                "started on a restored state: unrecorded VMs that nodes report with Usher's "
                "metadata are adopted, VMs destroyed since the backup removed, for %g s",
                grace,
            )

    def open(self) -> bool:
        """Whether adoption is allowed now."""
        return self.restored and time.monotonic() < self.until

    def end(self) -> None:
        """Close the window and remove the marker (idempotent)."""
        if self.restored:
            self.restored = False
            self.path.unlink(missing_ok=True)
