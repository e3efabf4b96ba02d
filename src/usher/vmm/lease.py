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
from dataclasses import dataclass, field
from pathlib import Path

from usher.model import LEASE_HELD


class LeaseHeld(Exception):
    """Another host's guest holds the VM's disk; the message says which."""


@dataclass
class Guests:
    """What a host's driver tells its leases when the host comes back."""

    held: Callable[[], Collection[str]] = list
    """The guests whose disks this host holds, as far as it knows: active ones, and incoming
    ones whose disk it accepted."""
    lost: Callable[[str, str | None], None] = field(default=lambda vm_id, holder: None)
    """Called with a guest and the disk's holder now (None: nobody) when a returning host
    finds the disk is no longer its own. Runs under the lease lock: no lease calls."""
    returned: Callable[[], None] = field(default=lambda: None)
    """Called once a returning host has settled and renewed (under the lease lock, too)."""


class Leases:
    """The leases a host (``holder``, unique per node) takes in ``storage``."""

    def __init__(
        self, storage: str | os.PathLike[str], holder: str, ttl: float, guests: Guests | None = None
    ) -> None:
        self.root = Path(storage) / "leases"
        self.holder = holder
        self.ttl = ttl
        self.guests = guests or Guests()
        for part in ("vms", "hosts", "offers"):
            (self.root / part).mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The lease lock; a host whose leases expired comes back first."""
        with frozen(self.root):
            if self._expired():
                self._come_back()
            yield

    def _host_file(self, holder: str) -> Path:
        return self.root / "hosts" / _host_name(holder)

    def _vm_file(self, vm_id: str) -> Path:
        return self.root / "vms" / vm_id

    def _offer_file(self, vm_id: str) -> Path:
        return self.root / "offers" / vm_id

    def renew(self) -> None:
        """This host is alive: its leases hold for another ``ttl`` seconds. (Under the lock,
        from :meth:`keep_alive`, so that an expired host comes back first.)"""
        record = {"renewed": time.time(), "ttl": self.ttl}
        _write(self._host_file(self.holder), json.dumps(record))

    def keep_alive(self) -> None:
        """Renew this host's leases (every ``ttl / 4`` while it runs); if they expired
        meanwhile (it stalled longer than ``ttl``), come back first."""
        with self._locked():
            self.renew()

    def _expired(self) -> bool:
        """This host renewed once and then not within its ``ttl``: others may have taken
        its disks. (A host that never renewed holds nothing to lose.)"""
        return self._host_file(self.holder).exists() and not self._alive(self.holder)

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

    def come_back(self) -> None:
        """This host returns (its LNM started, or it stalled past its ``ttl``): in one step
        (no other host can take a lease meanwhile), withdraw its offers and tell
        ``guests.lost`` of each guest whose lease no longer names this host (another host
        took the disk, or a migration's target did, or it was released: as NFSv4 does not
        give a client back locks that expired, that disk is no longer this copy's); then
        renew this host (the leases that still name it hold again). ``lost`` runs before the
        renewal: a returning host holds no lease until it says so, and its lost copies must
        be settled by then."""
        with frozen(self.root):
            self._come_back()

    def _come_back(self) -> None:
        for vm_id in self.guests.held():
            self._withdraw(vm_id)
            holder = self._read(vm_id)
            if holder != self.holder:
                self.guests.lost(vm_id, holder)
        self.renew()
        self.guests.returned()

    def offer(self, vm_id: str, nonce: str) -> None:
        """Offer the VM's disk, which this host holds, to the migration target that named
        itself ``nonce``; raises :class:`LeaseHeld` if this host does not hold it."""
        with self._locked():
            holder = self._read(vm_id)
            if holder != self.holder:
                raise LeaseHeld(
                    f"{LEASE_HELD}: this host does not hold the disk of VM {vm_id} "
                    f"(held by {holder or 'nobody'})"
                )
            _write(self._offer_file(vm_id), json.dumps({"from": self.holder, "to": nonce}))

    def accept(self, vm_id: str, nonce: str) -> bool:
        """The migration target ``nonce`` takes the VM's disk, if its holder still offers it
        to that target; returns whether it did."""
        with self._locked():
            offer = self._offer(vm_id)
            if offer != {"from": self._read(vm_id), "to": nonce}:
                return False
            self.renew()
            _write(self._vm_file(vm_id), self.holder)
            self._offer_file(vm_id).unlink()
            return True

    def withdraw(self, vm_id: str) -> bool:
        """A migration's source no longer offers the VM's disk; returns whether this host
        still holds it (False: the target took it, or the lease went otherwise)."""
        with self._locked():
            self._withdraw(vm_id)
            return self._read(vm_id) == self.holder

    def _offer(self, vm_id: str) -> dict[str, str] | None:
        text = _read_text(self._offer_file(vm_id))
        try:
            offer = json.loads(text) if text else None
        except ValueError:
            return None
        return offer if isinstance(offer, dict) else None

    def _withdraw(self, vm_id: str) -> None:
        offer = self._offer(vm_id)
        if offer is not None and offer.get("from") == self.holder:
            with contextlib.suppress(FileNotFoundError):
                self._offer_file(vm_id).unlink()

    def release(self, vm_id: str) -> None:
        """Give the VM's disk up, and withdraw its offer, if this host holds them.
        Idempotent."""
        with self._locked():
            self._withdraw(vm_id)
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
