"""An example Usher VMM driver shipped as a package of its own: ``memory``.

Its guests are records in a table, kept honestly (a start that does not fit the host is
refused, a paused guest cannot be rebooted, …). The table stands for the memory of a
hypervisor that outlives the LNM: it is written to ``<state_dir>/memory-vms.json`` on every
change and read again by :meth:`MemoryDriver.open`, so a restarted LNM finds its guests as
they were, running ones still running. It imports only the public driver interface
(:mod:`usher.vmm.base`) and the vocabulary (:mod:`usher.model`), and follows the contract
stated in :mod:`usher.vmm.base`. It declares no ``live_migrate`` capability, so the
controller refuses to migrate its VMs.

Install it next to Usher on a node and start the LNM with it::

    pip install usher-example-driver        # or: pip install -e examples/usher-example-driver
    usher lnm --driver memory --driver-option boot_seconds=0.5 …

Options: ``vcpus`` and ``memory_mb`` (the LNM passes its capacity), ``boot_seconds`` (how
long a start takes; default 0).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any

from usher.model import Capability, VMSpec, VMState
from usher.vmm.base import (
    DomainInfo,
    Driver,
    DriverError,
    Guest,
    InsufficientCapacity,
    InvalidTransition,
    UnknownVM,
)

__all__ = ["MemoryDriver"]

_STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
_ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})


@dataclass
class _Record:
    """One guest: what the driver knows of it."""

    id: str
    name: str
    spec: VMSpec
    state: VMState = VMState.STOPPED
    console: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    """What the controller keeps with the guest (``Guest.meta``), reported back as given."""

    def info(self) -> DomainInfo:
        return DomainInfo(
            id=self.id, name=self.name, spec=self.spec, state=self.state, meta=self.meta
        )

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "spec": self.spec.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Record:
        spec, state = VMSpec.model_validate(data["spec"]), VMState(data["state"])
        return cls(**{**data, "spec": spec, "state": state})


class MemoryDriver(Driver):
    """Guests in memory. Every method checks first, awaits at most once, and changes state
    only after its last ``await``: a cancelled call leaves the VM as it was."""

    name = "memory"
    capabilities = frozenset({Capability.PAUSE, Capability.REBOOT, Capability.CONSOLE})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        try:
            self._vcpus = int(self.options.get("vcpus", 8))
            self._memory_mb = int(self.options.get("memory_mb", 8192))
            self._boot_seconds = float(self.options.get("boot_seconds", 0.0))
        except (TypeError, ValueError) as exc:
            raise DriverError(f"memory driver: bad option: {exc}") from None
        self._records: dict[str, _Record] = {}
        self._booting: dict[str, VMSpec] = {}
        """Specs of starts under way: they hold their vCPUs and memory while they boot."""
        self._path = os.path.join(self.state_dir, "memory-vms.json") if self.state_dir else None

    async def open(self) -> None:
        """Read the table an earlier driver on this state dir left, if any."""
        if self._path is None:
            return
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        try:
            with open(self._path, encoding="utf-8") as file:
                records = [_Record.from_json(data) for data in json.load(file)]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DriverError(f"memory driver: cannot read {self._path}: {exc}") from None
        self._records = {record.id: record for record in records}

    # inventory ------------------------------------------------------------------------------

    async def list(self) -> list[DomainInfo]:
        return [record.info() for record in self._records.values()]

    async def info(self, vm_id: str) -> DomainInfo:
        return self._get(vm_id).info()

    # operations -----------------------------------------------------------------------------

    async def start(self, guest: Guest) -> DomainInfo:
        record = self._records.get(guest.id)
        if record is not None:
            self._require(record, "start", _STARTABLE)
        self._check_fits(guest.id, guest.spec)
        self._booting[guest.id] = guest.spec
        try:
            await asyncio.sleep(self._boot_seconds)
        finally:
            del self._booting[guest.id]
        if record is None:
            record = self._records[guest.id] = _Record(guest.id, guest.name, guest.spec)
        record.name, record.spec, record.meta = guest.name, guest.spec, dict(guest.meta)
        self._become(record, VMState.RUNNING)
        return record.info()

    async def stop(self, vm_id: str, *, timeout: float | None = None, hard: bool = False) -> None:
        record = self._get(vm_id)
        self._require(record, "stop", _ACTIVE)
        await asyncio.sleep(0)
        self._become(record, VMState.STOPPED)

    async def destroy(self, vm_id: str) -> None:
        await asyncio.sleep(0)
        if self._records.pop(vm_id, None) is not None:
            self._save()

    async def pause(self, vm_id: str) -> None:
        await self._change(vm_id, "pause", VMState.RUNNING, VMState.PAUSED)

    async def resume(self, vm_id: str) -> None:
        await self._change(vm_id, "resume", VMState.PAUSED, VMState.RUNNING)

    async def reboot(self, vm_id: str) -> None:
        await self._change(vm_id, "reboot", VMState.RUNNING, VMState.RUNNING)

    async def console_log(self, vm_id: str, *, offset: int = 0) -> bytes:
        return "".join(self._get(vm_id).console).encode()[offset:]

    async def crash(self, vm_id: str) -> None:
        """Test helper: the guest dies (``error``), and ``on_state_change`` hears of it."""
        record = self._get(vm_id)
        self._require(record, "crash", _ACTIVE)
        self._become(record, VMState.ERROR)
        await self.on_state_change(vm_id, VMState.ERROR, "crashed")

    # helpers --------------------------------------------------------------------------------

    def _get(self, vm_id: str) -> _Record:
        try:
            return self._records[vm_id]
        except KeyError:
            raise UnknownVM(vm_id) from None

    @staticmethod
    def _require(record: _Record, action: str, states: frozenset[VMState]) -> None:
        if record.state not in states:
            raise InvalidTransition(record.id, record.state, action)

    async def _change(self, vm_id: str, action: str, before: VMState, after: VMState) -> None:
        record = self._get(vm_id)
        self._require(record, action, frozenset({before}))
        await asyncio.sleep(0)
        self._become(record, after)

    def _become(self, record: _Record, state: VMState) -> None:
        record.state = state
        record.console.append(f"{record.name}: {state.value}\n")
        self._save()

    def _save(self) -> None:
        """Write the table atomically: a crash leaves the old one or the new one."""
        if self._path is None:
            return
        with open(f"{self._path}.tmp", "w", encoding="utf-8") as file:
            json.dump([record.to_json() for record in self._records.values()], file)
        os.replace(f"{self._path}.tmp", self._path)

    def _check_fits(self, vm_id: str, spec: VMSpec) -> None:
        held = [r.spec for r in self._records.values() if r.state in _ACTIVE and r.id != vm_id]
        held += self._booting.values()
        free_vcpus = self._vcpus - sum(s.vcpus for s in held)
        free_memory_mb = self._memory_mb - sum(s.memory_mb for s in held)
        if spec.vcpus > free_vcpus or spec.memory_mb > free_memory_mb:
            raise InsufficientCapacity(
                f"VM {vm_id} needs {spec.vcpus} vCPUs and {spec.memory_mb} MB, but only "
                f"{free_vcpus} vCPUs and {free_memory_mb} MB are free on this host"
            )
