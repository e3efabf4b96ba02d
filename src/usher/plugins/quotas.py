"""Quotas per user and per group: VMs, vCPUs and memory, checked before anything starts.

Config (``[plugins.quotas]``)::

    default = {vms = 10, vcpus = 20, memory_mb = 16384}  # every user not listed below
    users = {alice = {vms = 2}}                          # a user's own limits
    groups = {students = {vms = 20, vcpus = 20}}         # what a group's members share

A limit left out is unlimited. A user's usage is what its VMs hold (stopped ones too: their
disks and addresses are still theirs); a group's usage is that of all the members the plugin
has seen ask. A request that would exceed any limit is refused with a message naming the
quota, the request and what is left.

Snapshots (``snapshots``: how many; ``snapshot_mb``: the guest data they hold, as their
nodes reported) count against the quota of the VM's owner; a snapshot is refused if what it
would hold (the request's ``snapshot_bytes``) does not fit. A clone is a new VM: it counts
as a create does.

Disks (``disk_gb``) count the GiB a user's VMs asked for: each data disk, and a root disk
given a size (``--disk-size``; a root disk of its image's own size is the site's image and
counts 0). A resize counts what it adds: more vCPUs or memory, and each disk's growth.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from usher.model import OpRequest
from usher.plugin import PluginContext, Veto, hookimpl

PLUGIN = "quotas"
WHAT = {
    "vms": "VMs",
    "vcpus": "vCPUs",
    "memory_mb": "MB of memory",
    "snapshots": "snapshots",
    "snapshot_mb": "MB of snapshots",
    "disk_gb": "GiB of disks",
}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vms: int | None = Field(None, ge=0)
    vcpus: int | None = Field(None, ge=0)
    memory_mb: int | None = Field(None, ge=0)
    snapshots: int | None = Field(None, ge=0)
    snapshot_mb: int | None = Field(None, ge=0)
    disk_gb: int | None = Field(None, ge=0)


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Limits = Field(default_factory=Limits)
    users: dict[str, Limits] = Field(default_factory=dict)
    groups: dict[str, Limits] = Field(default_factory=dict)


class Quotas:
    ctx: PluginContext
    config: QuotaConfig

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.config = QuotaConfig.model_validate(config)

    async def usage(self, owners: list[str]) -> dict[str, int]:
        """What the VMs of ``owners`` hold together."""
        total = dict.fromkeys(WHAT, 0)
        snapshot_bytes = 0
        for owner in owners:
            cursor = None
            while True:
                page = await self.ctx.records.list_vms(owner=owner, limit=1000, cursor=cursor)
                for vm in page.items:
                    total["vms"] += 1
                    total["vcpus"] += vm.spec.vcpus
                    total["memory_mb"] += vm.spec.memory_mb
                    total["disk_gb"] += vm.spec.disks_asked_gb()
                    total["snapshots"] += len(vm.snapshots)
                    snapshot_bytes += sum(snap.size_bytes for snap in vm.snapshots)
                if not (cursor := page.next):
                    break
        total["snapshot_mb"] = math.ceil(snapshot_bytes / 2**20)
        return total

    async def _members(self, group: str, user: str) -> list[str]:
        """The members of ``group`` seen so far, ``user`` now among them."""
        members = set(await self.ctx.get(PLUGIN, f"group:{group}", []))
        if user not in members:
            members.add(user)
            await self.ctx.put(PLUGIN, f"group:{group}", sorted(members))
        return sorted(members)

    @hookimpl
    async def start_request(self, request: OpRequest) -> None:
        if request.count == 0 or request.spec is None:
            return  # booting existing VMs: they are counted already
        asked = {
            "vms": request.count,
            "vcpus": request.count * request.spec.vcpus,
            "memory_mb": request.count * request.spec.memory_mb,
            "disk_gb": request.count * request.spec.disks_asked_gb(),
        }
        await self._check(request, request.principal.name, asked)

    @hookimpl
    async def clone_request(self, request: OpRequest) -> None:
        await self.start_request(request)

    @hookimpl
    async def snapshot_request(self, request: OpRequest) -> None:
        vm = await self.ctx.records.get_vm(request.vm_ids[0]) if request.vm_ids else None
        if vm is None:
            return
        size = request.kwargs.get("snapshot_bytes")
        size = size if isinstance(size, int) and size >= 0 else 0
        await self._check(request, vm.owner, {"snapshots": 1, "snapshot_mb": size / 2**20})

    @hookimpl
    async def resize_request(self, request: OpRequest) -> None:
        vm = await self.ctx.records.get_vm(request.vm_ids[0]) if request.vm_ids else None
        if vm is None or request.spec is None:
            return
        after, before = request.spec, vm.spec
        asked = {
            "vcpus": after.vcpus - before.vcpus,
            "memory_mb": after.memory_mb - before.memory_mb,
            "disk_gb": after.disks_asked_gb() - before.disks_asked_gb(),
        }
        await self._check(request, vm.owner, {k: v for k, v in asked.items() if v > 0})

    async def _check(self, request: OpRequest, user: str, asked: dict[str, float]) -> None:
        """Refuse (:class:`Veto`) what ``asked`` would take beyond a limit of ``user`` or,
        when ``user`` is the one asking, of one of its groups."""
        checks: list[tuple[str, Limits, list[str]]] = [
            (f"user {user}", self.config.users.get(user, self.config.default), [user])
        ]
        asking = request.principal
        for group in asking.groups if user == asking.name else []:
            if group in self.config.groups:
                members = await self._members(group, user)
                checks.append((f"group {group}", self.config.groups[group], members))
        for who, limits, owners in checks:
            used = await self.usage(owners)
            for key, more in asked.items():
                limit = getattr(limits, key)
                if limit is not None and used[key] + more > limit:
                    left = max(0, limit - used[key])
                    raise Veto(
                        f"quota exceeded: {who} may have {limit} {WHAT[key]} ({key} quota), "
                        f"holds {used[key]} and asks for {math.ceil(more)} more; {left} left"
                    )
