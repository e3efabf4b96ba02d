"""Quotas per user and per group: VMs, vCPUs and memory, checked before anything starts.

Config (``[plugins.quotas]``)::

    default = {vms = 10, vcpus = 20, memory_mb = 16384}  # every user not listed below
    users = {alice = {vms = 2}}                          # a user's own limits
    groups = {students = {vms = 20, vcpus = 20}}         # what a group's members share

A limit left out is unlimited. A user's usage is what its VMs hold (stopped ones too: their
disks and addresses are still theirs); a group's usage is that of all the members the plugin
has seen ask. A request that would exceed any limit is refused with a message naming the
quota, the request and what is left.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from usher.model import OpRequest
from usher.plugin import PluginContext, Veto, hookimpl

PLUGIN = "quotas"
WHAT = {"vms": "VMs", "vcpus": "vCPUs", "memory_mb": "MB of memory"}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vms: int | None = Field(None, ge=0)
    vcpus: int | None = Field(None, ge=0)
    memory_mb: int | None = Field(None, ge=0)


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
        total = {"vms": 0, "vcpus": 0, "memory_mb": 0}
        for owner in owners:
            cursor = None
            while True:
                page = await self.ctx.records.list_vms(owner=owner, limit=1000, cursor=cursor)
                for vm in page.items:
                    total["vms"] += 1
                    total["vcpus"] += vm.spec.vcpus
                    total["memory_mb"] += vm.spec.memory_mb
                if not (cursor := page.next):
                    break
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
        }
        user = request.principal.name
        checks: list[tuple[str, Limits, list[str]]] = [
            (f"user {user}", self.config.users.get(user, self.config.default), [user])
        ]
        for group in request.principal.groups:
            if group in self.config.groups:
                members = await self._members(group, user)
                checks.append((f"group {group}", self.config.groups[group], members))
        for who, limits, owners in checks:
            used = await self.usage(owners)
            for key, label in WHAT.items():
                limit = getattr(limits, key)
                if limit is not None and used[key] + asked[key] > limit:
                    left = max(0, limit - used[key])
                    raise Veto(
                        f"quota exceeded: {who} may have {limit} {label} ({key} quota), "
                        f"holds {used[key]} and asks for {asked[key]} more; {left} left"
                    )
