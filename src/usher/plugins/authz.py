"""Authorization by role and ownership, with virtual clusters their creators administer.

Roles: ``admin`` may do everything; ``operator`` sees and acts on every VM but node actions
(drain, undrain) stay admin-only; ``user`` sees and acts only on its own VMs and on the VMs of
the virtual clusters it administers or is a member of. A principal with none of these roles
may do nothing. The creator of a virtual cluster administers it and can add members (as the
per-cluster LDAP groups of the original did):

``GET /v1/clusters/{name}``, ``PUT /v1/clusters/{name}`` (make one before its first VM),
``PUT /v1/clusters/{name}/members/{user}``,
``DELETE /v1/clusters/{name}/members/{user}``; ``ush cluster
create|show|add-member|remove-member``.
Events: ``cluster_create`` (once per cluster, however it was made), ``cluster_member_add``,
``cluster_member_remove``.
Guests of a cluster whose image runs cloud-init get an account for each member, with their
SSH keys, and sudo for the cluster's administrator (hook ``guest_config``).

Config (``[plugins.authz]``): ``operator_denied`` lists the actions operators may not do
(default: ``node.drain`` and ``node.undrain``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from usher.model import NAME_PATTERN, VM, OpKind, OpRequest, Principal, Scope
from usher.plugin import (
    PRINCIPAL_PATTERN,
    GuestConfig,
    PluginContext,
    PluginData,
    PrincipalDep,
    RequestError,
    Veto,
    account_name,
    hookimpl,
)

PLUGIN = "authz"
ClusterPath = Annotated[str, Path(pattern=NAME_PATTERN)]
UserPath = Annotated[str, Path(pattern=PRINCIPAL_PATTERN)]
ADMIN_ONLY = frozenset(
    {"node.drain", "node.undrain", "node.evacuate", "node.maintenance", "node.activate"}
)
# what a plain user may do at all; ownership is checked on top for the vm.* actions
USER_ACTIONS = frozenset(
    {
        "vm.list",
        "vm.show",
        "vm.console",
        "vm.console.attach",
        "vm.ssh",
        "vm.change",
        "key.list",
        "key.add",
        "key.remove",
        "operation.list",
        "operation.show",
        "event.list",
        "event.stream",
        "node.list",
        "node.show",
        "image.list",
        "image.show",
        "cluster.show",
        "cluster.members",
    }
    | {f"vm.{kind.value}" for kind in OpKind}
)


class ClusterInfo(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)
    owner: str
    members: list[str] = Field(default_factory=list)


class Authorization:
    ctx: PluginContext
    operator_denied: frozenset[str] = ADMIN_ONLY

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.operator_denied = frozenset(config.get("operator_denied", ADMIN_ONLY))

    # --- cluster records (plugin data) ---------------------------------------------------

    async def cluster(self, name: str) -> ClusterInfo | None:
        found = await self.ctx.get(PLUGIN, f"cluster:{name}")
        return ClusterInfo.model_validate(found) if found else None

    async def _change(
        self, name: str, change: Callable[[ClusterInfo | None], ClusterInfo | None]
    ) -> ClusterInfo | None:
        """Read-modify-write of cluster ``name`` and the member index, atomic in the
        database: ``change`` gets the cluster as it is (None: there is none) and returns it
        as it should be (None: unchanged). Returns the cluster as it is afterwards."""

        async def apply(data: PluginData) -> ClusterInfo | None:
            found = await data.get(f"cluster:{name}")
            old = ClusterInfo.model_validate(found) if found else None
            new = change(old.model_copy(deep=True) if old else None)
            if new is None:
                return old
            await data.put(f"cluster:{name}", new.model_dump())
            members = await data.get("member-index", {})
            people = {new.owner, *new.members}
            for user in people:
                members[user] = sorted({*members.get(user, []), name})
            for user, clusters in list(members.items()):
                if name in clusters and user not in people:
                    members[user] = [c for c in clusters if c != name]
            await data.put("member-index", members)
            return new

        return await self.ctx.atomically(PLUGIN, apply)

    async def _create(self, name: str, who: Principal) -> ClusterInfo:
        """Cluster ``name`` as it is, made with ``who`` as its owner if there was none;
        ``cluster_create`` fires once, for the call that made it."""
        made = False

        def create(old: ClusterInfo | None) -> ClusterInfo | None:
            nonlocal made
            made = old is None  # the change may run again: the last run's answer counts
            return ClusterInfo(name=name, owner=who.name) if made else None

        info = await self._change(name, create)
        assert info is not None
        if made:
            await self.ctx.emit(
                "cluster_create", principal=who.name, data={"cluster": name, "owner": who.name}
            )
        return info

    async def clusters_of(self, user: str) -> list[str]:
        """Virtual clusters ``user`` administers or is a member of."""
        return list((await self.ctx.get(PLUGIN, "member-index", {})).get(user, []))

    async def _member(self, principal: Principal, name: str | None) -> bool:
        """Does ``principal`` administer or belong to the existing virtual cluster ``name``?"""
        info = await self.cluster(name) if name else None
        return info is not None and principal.name in (info.owner, *info.members)

    # --- hooks -----------------------------------------------------------------------------

    @staticmethod
    def _sees_all(principal: Principal) -> bool:
        return bool({"admin", "operator"} & set(principal.roles))

    @hookimpl
    async def scope(self, principal: Principal) -> Scope | None:
        if self._sees_all(principal):
            return None
        return Scope(
            owners=[principal.name],
            clusters=await self.clusters_of(principal.name),
            principals=[principal.name],
        )

    @hookimpl
    async def authorize(self, principal: Principal, action: str, target: dict[str, Any]) -> bool:
        roles = set(principal.roles)
        if "admin" in roles:
            return True
        if "operator" in roles:
            return action not in self.operator_denied
        if "user" not in roles or action not in USER_ACTIONS:
            return False
        if action in ("operation.show", "operation.cancel"):
            return target.get("operation", {}).get("principal") == principal.name
        cluster = target.get("cluster")
        if action == "vm.start" and "count" in target:  # new VMs: a new or a member cluster
            return (
                cluster is None
                or await self.cluster(cluster) is None
                or await self._member(principal, cluster)
            )
        for vm in target.get("vms") or []:
            if vm.get("owner") != principal.name and not await self._member(
                principal, vm.get("cluster")
            ):
                return False
        return not cluster or await self._member(principal, cluster)

    @hookimpl
    async def guest_config(self, vm: VM, config: GuestConfig) -> None:
        """Every member of the VM's virtual cluster gets an account with their SSH keys; its
        administrator (the cluster's owner) with sudo. Members added later get theirs at the
        next new VM (cloud-init makes accounts on a guest's first boot)."""
        info = await self.cluster(vm.cluster) if vm.cluster else None
        if info is None:
            return
        for user in dict.fromkeys([info.owner, *info.members]):
            keys = await self.ctx.ssh_keys(user)
            config.add_user(account_name(user), keys=keys, sudo=user == info.owner)

    @hookimpl
    async def start_request(self, request: OpRequest) -> None:
        """The first to start VMs in a virtual cluster becomes its administrator. Two who
        start the same new cluster at once: the first owns it, the other is refused unless
        the first made it a member (atomic in the database)."""
        name = request.cluster
        if name is None or request.dry_run or request.count == 0:
            return
        who = request.principal

        info = await self._create(name, who)
        if not self._sees_all(who) and who.name not in (info.owner, *info.members):
            raise Veto(f"virtual cluster {name} belongs to {info.owner}; ask to become a member")

    # --- routes ----------------------------------------------------------------------------

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/clusters", tags=["clusters"])

        def administered(name: str, principal: Principal, info: ClusterInfo | None) -> ClusterInfo:
            if info is None:
                raise RequestError(404, f"unknown virtual cluster {name!r}")
            if principal.name != info.owner and "admin" not in principal.roles:
                raise RequestError(
                    403,
                    f"only {info.owner} (who created {name}) or an admin may change its members",
                )
            return info

        @router.get("/{name}", response_model=ClusterInfo)
        async def show(name: ClusterPath, principal: PrincipalDep) -> ClusterInfo:
            info = await self.cluster(name)
            if info is None or not (
                self._sees_all(principal) or principal.name in (info.owner, *info.members)
            ):
                raise RequestError(404, f"unknown virtual cluster {name!r}")
            return info

        @router.put("/{name}", response_model=ClusterInfo)
        async def create(name: ClusterPath, principal: PrincipalDep) -> ClusterInfo:
            """Make a virtual cluster the caller administers before any VM is in it (so
            members can be added first); one the caller already has is left as it is."""

            info = await self._create(name, principal)
            if info.owner != principal.name and not self._sees_all(principal):
                raise RequestError(409, f"virtual cluster {name} belongs to {info.owner}")
            return info

        @router.put("/{name}/members/{user}", response_model=ClusterInfo)
        async def add(name: ClusterPath, user: UserPath, principal: PrincipalDep) -> ClusterInfo:
            changed = False

            def adding(old: ClusterInfo | None) -> ClusterInfo | None:
                nonlocal changed
                info = administered(name, principal, old)
                changed = user not in info.members and user != info.owner
                if changed:
                    info.members.append(user)
                return info if changed else None

            info = await self._change(name, adding)
            if changed:
                await self.ctx.emit(
                    "cluster_member_add",
                    principal=principal.name,
                    data={"cluster": name, "user": user},
                )
            assert info is not None
            return info

        @router.delete("/{name}/members/{user}", response_model=ClusterInfo)
        async def remove(name: ClusterPath, user: UserPath, principal: PrincipalDep) -> ClusterInfo:
            changed = False

            def removing(old: ClusterInfo | None) -> ClusterInfo | None:
                nonlocal changed
                info = administered(name, principal, old)
                changed = user in info.members
                if changed:
                    info.members.remove(user)
                return info if changed else None

            info = await self._change(name, removing)
            if changed:
                await self.ctx.emit(
                    "cluster_member_remove",
                    principal=principal.name,
                    data={"cluster": name, "user": user},
                )
            assert info is not None
            return info

        return [router]
