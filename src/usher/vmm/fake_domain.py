"""What the ``fake`` driver knows about one simulated guest, and what it costs while it runs."""

from __future__ import annotations

import email
import json
from dataclasses import dataclass, field
from typing import Any

from usher.model import Snapshot, VMSpec, VMState
from usher.vmm.base import DomainInfo

CPU_LOAD = 0.05
"""CPU-seconds a running guest burns per second and per vCPU."""

MEMORY_LOAD = 0.5
"""Fraction of its memory a running or paused guest uses."""

STARTABLE = frozenset({VMState.STOPPED, VMState.ERROR})
ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
RUNNING = frozenset({VMState.RUNNING})
PAUSED = frozenset({VMState.PAUSED})
INCOMING = frozenset({VMState.MIGRATING})
RESERVING = ACTIVE | INCOMING
RESIZABLE = ACTIVE | {VMState.STOPPED}
"""States in which a guest's disks grow (``resize_disk``)."""
"""States in which a guest holds its vCPUs and memory (a prepared incoming VM is migrating)."""


@dataclass
class FakeDomain:
    """One simulated guest."""

    id: str
    name: str
    spec: VMSpec
    state: VMState = VMState.STOPPED
    reason: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    """What the controller keeps with the guest (``Guest.meta``), reported back as given."""
    cpu_seconds: float = 0.0
    """CPU time burnt before ``running_since``."""
    running_since: float | None = None
    console: list[str] = field(default_factory=list)
    line: str = ""
    """What was typed on the console since the last Enter (:mod:`usher.vmm.fake_console`)."""
    unread: str = ""
    """Console input typed while the guest was paused, which it reads once resumed."""
    snapshots: list[Snapshot] = field(default_factory=list)
    """Its snapshots, oldest first (:mod:`usher.vmm.fake_snapshots`)."""
    received: bool = False
    """An incoming VM whose whole state arrived (the source let go of it)."""
    paused: bool = False
    """An incoming VM that its source sent paused: it arrives paused."""
    sent: bool = False
    """A migration's source offered the VM's disk to its target (until the migration ends):
    once the target took it, this copy is inactive, as a QEMU source after it sent all."""

    def burnt(self, t: float) -> float:
        """CPU-seconds burnt up to time ``t``."""
        cpu = self.cpu_seconds
        if self.running_since is not None:
            cpu += max(0.0, t - self.running_since) * CPU_LOAD * self.spec.vcpus
        return cpu

    def info(self, t: float) -> DomainInfo:
        """The guest as it is at time ``t``."""
        return DomainInfo(
            id=self.id,
            name=self.name,
            spec=self.spec,
            state=self.state,
            reason=self.reason,
            meta=self.meta,
            cpu_seconds=self.burnt(t),
            memory_used_mb=self.spec.memory_mb * MEMORY_LOAD if self.state in ACTIVE else 0.0,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "spec": self.spec.model_dump(mode="json"),
            "state": self.state.value,
            "reason": self.reason,
            "meta": self.meta,
            "cpu_seconds": self.cpu_seconds,
            "running_since": self.running_since,
            "console": self.console,
            "line": self.line,
            "unread": self.unread,
            "received": self.received,
            "paused": self.paused,
            "sent": self.sent,
            "snapshots": [snap.model_dump(mode="json") for snap in self.snapshots],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FakeDomain:
        return cls(
            id=data["id"],
            name=data["name"],
            spec=VMSpec.model_validate(data["spec"]),
            state=VMState(data["state"]),
            reason=data["reason"],
            meta=dict(data.get("meta") or {}),
            cpu_seconds=data["cpu_seconds"],
            running_since=data["running_since"],
            console=list(data["console"]),
            line=str(data.get("line", "")),
            unread=str(data.get("unread", "")),
            received=bool(data.get("received", False)),
            paused=bool(data.get("paused", False)),
            sent=bool(data.get("sent", False)),
            snapshots=[Snapshot.model_validate(snap) for snap in data.get("snapshots", [])],
        )


def cloud_init_report(config: dict[str, Any]) -> str:
    """What a simulated guest's cloud-init prints about its seed: hostname, accounts (with
    how many keys each, and sudo), network and whether the user's own part came along."""
    user_data = str(config.get("user_data") or "")
    message = email.message_from_string(user_data)
    parts = [p for p in message.walk() if not p.is_multipart()] if message.is_multipart() else []
    texts = [p.get_payload(decode=True).decode() for p in parts] if parts else [user_data]
    ours = next((t for t in reversed(texts) if t.startswith("#cloud-config\n{")), "")
    cloud = json.loads(ours.removeprefix("#cloud-config\n")) if ours else {}
    users = ", ".join(
        f"{u['name']}({len(u.get('ssh_authorized_keys', []))} keys"
        f"{', sudo' if 'sudo' in u else ''})"
        for u in cloud.get("users", [])
    )
    network = "static" if config.get("network_config") else "dhcp"
    own = " +user-data" if len(texts) > 1 else ""
    return (
        f"fake cloud-init: hostname {cloud.get('hostname')}; users {users or 'none'}; "
        f"network {network}{own}\n"
    )
