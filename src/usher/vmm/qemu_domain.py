"""What the ``qemu`` driver knows about one VM: its record, its QEMU process, its state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from usher.model import Image, VMSpec, VMState
from usher.vmm import qemu_process as proc
from usher.vmm.base import DomainInfo
from usher.vmm.qemu_argv import Nic
from usher.vmm.qemu_monitor import Monitor

LIVE = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING})
"""States with a QEMU process, which holds the VM's vCPUs and memory."""


@dataclass
class Domain:
    """One VM: its record, and while QEMU runs, the process and its QMP session."""

    id: str
    name: str
    spec: VMSpec
    image: Image
    nics: list[Nic]
    accel: str
    state: VMState = VMState.STOPPED
    reason: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    """What the controller keeps with the VM (``Guest.meta``), reported back as given."""
    incoming: bool = False
    seed: bool = False
    """The guest has a cloud-init seed (``seed.iso`` in its shared dir) as a CD-ROM."""
    ssh_forward: str | None = None
    """``host:port`` this node forwards to the guest's port 22 (user-mode networking)."""
    pid: int | None = None
    monitor: Monitor | None = None
    watcher: asyncio.Task[None] | None = None
    expect_exit: bool = False
    """An operation ends QEMU: the watcher only tells it (``exited``), reports nothing."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "spec": self.spec.model_dump(mode="json"),
            "image": self.image.model_dump(mode="json"),
            "nics": [nic.to_json() for nic in self.nics],
            "accel": self.accel,
            "state": self.state.value,
            "reason": self.reason,
            "meta": self.meta,
            "incoming": self.incoming,
            "seed": self.seed,
            "ssh_forward": self.ssh_forward,
        }

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Domain:
        return cls(
            id=data["id"],
            name=data["name"],
            spec=VMSpec.model_validate(data["spec"]),
            image=Image.model_validate(data["image"]),
            nics=[Nic(**nic) for nic in data["nics"]],
            accel=data["accel"],
            state=VMState(data["state"]),
            reason=data["reason"],
            meta=dict(data.get("meta") or {}),
            incoming=data["incoming"],
            seed=data.get("seed", False),
            ssh_forward=data.get("ssh_forward"),
        )

    def usage(self) -> tuple[float, float]:
        """CPU seconds and resident MB of the VM's QEMU process (0 when it has none)."""
        stat = proc.read_stat(self.pid) if self.pid and self.state in LIVE else None
        if stat is None or not stat.alive:
            return 0.0, 0.0
        return stat.cpu_seconds, stat.rss_bytes / 2**20

    def info(self) -> DomainInfo:
        cpu_seconds, memory_used_mb = self.usage()
        return DomainInfo(
            id=self.id,
            name=self.name,
            spec=self.spec,
            state=self.state,
            reason=self.reason,
            meta=self.meta,
            cpu_seconds=cpu_seconds,
            memory_used_mb=memory_used_mb,
            endpoints={"ssh": self.ssh_forward} if self.ssh_forward else {},
        )


def ending(
    shutdown: dict[str, Any] | None, how: str | None, said: str | None = None
) -> tuple[VMState, str]:
    """The state and reason of a QEMU that ended on its own, from its ``SHUTDOWN`` event (if
    it sent one), how the process ended (if /proc still tells) and the last line it printed."""
    if shutdown is None:
        reason = "QEMU process exited unexpectedly" + (f" ({how})" if how else "")
        return VMState.ERROR, f"{reason}: {said}" if said else reason
    reason = shutdown.get("reason")
    if reason == "guest-shutdown":
        return VMState.STOPPED, "guest powered off"
    if reason == "host-signal":
        return VMState.ERROR, "QEMU was terminated by a signal (SIGTERM, SIGINT or SIGHUP)"
    return VMState.ERROR, f"QEMU shut down ({reason})"


def state_of(status: str, incoming: bool) -> tuple[VMState, str | None]:
    """A VM's state from QEMU's ``query-status`` run state."""
    if incoming:
        return VMState.MIGRATING, None
    if status == "running":
        return VMState.RUNNING, None
    if status in ("internal-error", "guest-panicked", "shutdown"):
        return VMState.ERROR, f"QEMU reports {status}"
    return VMState.PAUSED, None if status == "paused" else f"QEMU reports {status}"
