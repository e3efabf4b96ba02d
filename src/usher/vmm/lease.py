"""Disk leases in the shared storage, as a host's NFSv4 locks behave, for simulated guests.

Two running copies of one VM would write one disk. What makes that impossible for real
guests is QEMU's image locking: a QEMU holds a lock on its disk while it runs, on NFSv4 the
server keeps it for the host as long as the host renews its lease, and a second QEMU cannot
open the disk for writing. The ``fake`` driver's guests are not processes, so it models the
same with files in the shared storage directory every node sees:

* ``leases/vms/<vm id>`` names the host (a node's state dir) whose guest holds the VM's disk;
* ``leases/hosts/<host>`` holds when that host last renewed (and its ``ttl``); a host renews
  every few seconds while its LNM runs (for the simulation, the LNM process is the host);
* a lease whose host has not renewed for ``ttl`` seconds has expired, as NFSv4 expires the
  locks of a host that died, and may be taken by another host.

Every change is made under one ``flock`` of ``leases/.lock``, so two hosts that both try to
take a free lease cannot both get it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from usher.model import LEASE_HELD


class LeaseHeld(Exception):
    """Another host's guest holds the VM's disk; the message says which."""


class Leases:
    """The leases a host (``holder``, unique per node) takes in ``storage``."""

    def __init__(self, storage: str | os.PathLike[str], holder: str, ttl: float) -> None:
        self.root = Path(storage) / "leases"
        self.holder = holder
        self.ttl = ttl
        (self.root / "vms").mkdir(parents=True, exist_ok=True)
        (self.root / "hosts").mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _host_file(self, holder: str) -> Path:
        return self.root / "hosts" / _host_name(holder)

    def _vm_file(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def renew(self) -> None:
        """This host is alive: its leases hold for another ``ttl`` seconds."""
        record = {"renewed": time.time(), "ttl": self.ttl}
        _write(self._host_file(self.holder), json.dumps(record))

    def _alive(self, holder: str) -> bool:
        return host_alive(self.root, holder)

    def _read(self, vm_id: str) -> str | None:
        return lease_holder(self.root, vm_id)

    def take(self, vm_id: str) -> None:
        """Take the VM's disk for this host; raises :class:`LeaseHeld` if another live host
        holds it. Taking a lease this host holds already succeeds."""
        with self._locked():
            holder = self._read(vm_id)
            if holder not in (None, self.holder) and self._alive(holder):
                raise LeaseHeld(
                    f"{LEASE_HELD}: the disk of VM {vm_id} is in use by a guest on host "
                    f"{holder} (a copy may still run there)"
                )
            self.renew()
            _write(self._vm_file(vm_id), self.holder)

    def come_back(self, vm_ids: list[str], lost: Callable[[str, str], None]) -> None:
        """This host returns with guests ``vm_ids``: in one step (no other host can take a
        lease meanwhile), call ``lost(vm_id, holder)`` for each guest whose disk another
        live host took while this one was away, then renew this host and take the others'
        leases up again. ``lost`` runs before the renewal: as a host coming back, this one
        holds no lease until it says so, and its lost copies must be settled by then."""
        with self._locked():
            kept: list[str] = []
            for vm_id in vm_ids:
                holder = self._read(vm_id)
                if holder not in (None, self.holder) and self._alive(holder):
                    lost(vm_id, holder)
                else:
                    kept.append(vm_id)
            self.renew()
            for vm_id in kept:
                _write(self._vm_file(vm_id), self.holder)

    def hand_over(self, vm_id: str) -> None:
        """An incoming migration's guest took over the VM (its source sent all of it and let
        go): the lease moves to this host whoever held it."""
        with self._locked():
            self.renew()
            _write(self._vm_file(vm_id), self.holder)

    def release(self, vm_id: str) -> None:
        """Give the VM's disk up, if this host holds it. Idempotent."""
        with self._locked():
            if self._read(vm_id) == self.holder:
                with contextlib.suppress(FileNotFoundError):
                    self._vm_file(vm_id).unlink()

    def holds(self, vm_id: str) -> bool:
        return self._read(vm_id) == self.holder


def host_alive(root: Path, holder: str) -> bool:
    """Whether ``holder`` renewed its leases (under ``root``) within its ``ttl``."""
    try:
        record = json.loads((root / "hosts" / _host_name(holder)).read_text())
        return bool(time.time() - float(record["renewed"]) < float(record["ttl"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def lease_holder(root: Path, vm_id: str) -> str | None:
    """Whom ``leases/vms/<vm_id>`` under ``root`` names, alive or not (None: nobody)."""
    try:
        return (root / "vms" / vm_id).read_text() or None
    except FileNotFoundError:
        return None


def _host_name(holder: str) -> str:
    return hashlib.sha256(holder.encode()).hexdigest()[:32]


def _write(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
