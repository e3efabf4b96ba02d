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
  locks of a host that died, and may be taken by another host; a host that was away that
  long (dead, or stalled) settles what it lost before it renews (:meth:`Leases.come_back`);
* ``leases/offers/<vm id>`` names the source of a live migration that offers the disk to
  its target: the target takes it only while it is offered (:meth:`Leases.accept`), and a
  source whose migration broke withdraws the offer and learns in the same step whether
  the target took the disk (:meth:`Leases.withdraw`). So exactly one of them runs on,
  as with QEMU, whose source lets go of the disk only once it sent the whole guest.

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
from collections.abc import Callable, Collection, Iterator
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
        (self.root / "offers").mkdir(parents=True, exist_ok=True)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return frozen(self.root)

    def _host_file(self, holder: str) -> Path:
        return self.root / "hosts" / _host_name(holder)

    def _vm_file(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def _offer_file(self, vm_id: str) -> Path:
        return self.root / "offers" / vm_id

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

    def come_back(
        self,
        vm_ids: Collection[str],
        lost: Callable[[str, str], None],
        handed: Collection[str] = (),
    ) -> None:
        """This host returns with guests ``vm_ids``: in one step (no other host can take a
        lease meanwhile), call ``lost(vm_id, holder)`` for each guest whose disk another
        live host took while this one was away, or whose disk this host offered to a
        migration's target (``handed``) and the target took; withdraw its other offers;
        then renew this host and take the others' leases up again. ``lost`` runs before the
        renewal: as a host coming back, this one holds no lease until it says so, and its
        lost copies must be settled by then."""
        with self._locked():
            self._come_back(vm_ids, lost, handed)

    def _come_back(
        self, vm_ids: Collection[str], lost: Callable[[str, str], None], handed: Collection[str]
    ) -> None:
        kept: list[str] = []
        for vm_id in vm_ids:
            self._withdraw(vm_id)
            holder = self._read(vm_id)
            if holder not in (None, self.holder) and (vm_id in handed or self._alive(holder)):
                lost(vm_id, holder)
            else:
                kept.append(vm_id)
        self.renew()
        for vm_id in kept:
            _write(self._vm_file(vm_id), self.holder)

    def keep_alive(
        self,
        vm_ids: Callable[[], Collection[str]],
        lost: Callable[[str, str], None],
        handed: Callable[[], Collection[str]],
    ) -> None:
        """Renew this host's leases; if they expired meanwhile (the host stalled for longer
        than ``ttl``, and other hosts may have taken its disks), come back as a returning
        host does (:meth:`come_back`) with the guests ``vm_ids()`` it has now."""
        with self._locked():
            if self._alive(self.holder):
                self.renew()
            else:
                self._come_back(vm_ids(), lost, handed())

    def offer(self, vm_id: str) -> None:
        """Offer the VM's disk, which this host holds, to a live migration's target; raises
        :class:`LeaseHeld` if this host does not hold it."""
        with self._locked():
            holder = self._read(vm_id)
            if holder != self.holder:
                raise LeaseHeld(
                    f"{LEASE_HELD}: this host does not hold the disk of VM {vm_id} "
                    f"(held by {holder or 'nobody'})"
                )
            _write(self._offer_file(vm_id), self.holder)

    def accept(self, vm_id: str) -> bool:
        """A live migration's target takes the VM's disk, if its holder still offers it;
        returns whether it did."""
        with self._locked():
            source = _read_text(self._offer_file(vm_id))
            if source is None or self._read(vm_id) != source:
                return False
            self._offer_file(vm_id).unlink()
            self.renew()
            _write(self._vm_file(vm_id), self.holder)
            return True

    def withdraw(self, vm_id: str) -> bool:
        """A migration's source no longer offers the VM's disk; returns whether this host
        still holds it (False: the target took it first)."""
        with self._locked():
            self._withdraw(vm_id)
            return self._read(vm_id) == self.holder

    def _withdraw(self, vm_id: str) -> None:
        if _read_text(self._offer_file(vm_id)) == self.holder:
            self._offer_file(vm_id).unlink()

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
    return _read_text(root / "vms" / vm_id)


@contextlib.contextmanager
def frozen(root: Path) -> Iterator[None]:
    """No lease under ``root`` changes while this is held (for a checker's consistent look)."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None


def _host_name(holder: str) -> str:
    return hashlib.sha256(holder.encode()).hexdigest()[:32]


def _write(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
