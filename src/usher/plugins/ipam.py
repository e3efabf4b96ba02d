"""IP management and DNS (the original's ``uipmgr`` and ``udns``): one address and MAC per VM.

Config (``[plugins.ipam]``)::

    domain = "usher.test"      # DNS names are VM.CLUSTER.DOMAIN (VM.DOMAIN outside a cluster)
    dnsmasq = false            # run dnsmasq for every range (a range's own flag wins)
    dns_port = 53              # where dnsmasq answers DNS (DHCP is always port 67)
    lease_seconds = 3600
    ranges = [
      {name = "lab", network = "10.213.9.0/24", first = "10.213.9.100",
       last = "10.213.9.199", gateway = "10.213.9.1", bridge = "usher-t-dhcp", vlan = 0,
       dnsmasq = true, allow = {roles = ["admin", "user"], users = [], groups = []}},
    ]

A start of new VMs takes the range named by its ``network`` kwarg, else the first range the
principal may use. A range without ``allow`` is open to everybody; with it, to principals with
one of its roles, named in its users or in one of its groups (admins may use every range).
Each VM gets the lowest free address between ``first`` and ``last`` (never the gateway, the
network or the broadcast address) and a MAC made of 52:54:00 and the address's low three
bytes, so a MAC is unique as long as the ranges are (which the config check makes sure of).
Its NIC is on ``bridge:<range bridge>``; a non-zero ``vlan`` is passed along in the NIC for
drivers and sites that tag (the QEMU driver ignores it).

Allocations are plugin data (one list per range), changed under the plugin's own lock and
written through at once, so no address is handed out twice, also across controller restarts.
They are released when the VM is destroyed or its start fails; starting such a VM again takes
its old address back if it is still free and is refused if it is not.
A VM adopted after a restore (``vm_adopted``) takes its address back; if another VM holds it,
it stays with that VM and an ``ipam_conflict`` event names both.

With dnsmasq enabled, a dnsmasq per bridge on the controller host (see
:mod:`usher.plugins.dnsmasq`) serves static DHCP leases and the DNS names of the allocations.
Guests whose image runs cloud-init are configured with their address, gateway and (with
dnsmasq) DNS server (hook ``guest_config``). IPv4 only. Routes: ``GET /v1/ipam/ranges``
(usage of every range) and ``GET /v1/ipam/allocations`` (admins).
"""

from __future__ import annotations

import asyncio
import itertools
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from usher.model import VM, Event, OpRequest, Principal
from usher.plugin import (
    ContextDep,
    Forbidden,
    GuestConfig,
    PluginContext,
    PrincipalDep,
    Veto,
    allow,
    hookimpl,
)
from usher.plugins.dnsmasq import Dnsmasq, Lease

PLUGIN = "ipam"
RELEASING_EVENTS = frozenset({"unregister", "destroy", "start_failure"})


class Allow(BaseModel):
    """Who may take addresses from a range: any role, user or group listed."""

    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    def admits(self, principal: Principal) -> bool:
        return (
            principal.is_admin
            or principal.name in self.users
            or bool(set(principal.roles) & set(self.roles))
            or bool(set(principal.groups) & set(self.groups))
        )

    def __str__(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in self if names]
        return "; ".join(parts) or "admins only"


class Range(BaseModel):
    """A named range of addresses on one bridge."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    network: IPv4Network
    first: IPv4Address
    last: IPv4Address
    gateway: IPv4Address
    bridge: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
    vlan: int = Field(0, ge=0, le=4094)
    dnsmasq: bool | None = None
    allow: Allow | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        for what in ("first", "last", "gateway"):
            if getattr(self, what) not in self.network:
                raise ValueError(f"range {self.name}: {what} is not in {self.network}")
        if self.first > self.last:
            raise ValueError(f"range {self.name}: first comes after last")
        if int(self.first) >> 24 != int(self.last) >> 24:
            raise ValueError(f"range {self.name}: spans more than a /8 (MACs would repeat)")
        if not self.addresses():
            raise ValueError(f"range {self.name}: has no usable address")
        return self

    def addresses(self) -> list[str]:
        """Every address the range hands out, lowest first."""
        skip = {self.gateway, self.network.network_address, self.network.broadcast_address}
        return [
            str(IPv4Address(n))
            for n in range(int(self.first), int(self.last) + 1)
            if IPv4Address(n) not in skip
        ]

    def admits(self, principal: Principal) -> bool:
        return self.allow is None or self.allow.admits(principal)

    @property
    def gateway_interface(self) -> IPv4Interface:
        return IPv4Interface(f"{self.gateway}/{self.network.prefixlen}")


class IpamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    domain: str = Field("usher", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    dnsmasq: bool = False
    dns_port: int = Field(53, ge=0, le=65535)
    lease_seconds: int = Field(3600, ge=120)
    ranges: list[Range] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> IpamConfig:
        spans = sorted(
            (int(r.first) & 0xFFFFFF, int(r.last) & 0xFFFFFF, r.name) for r in self.ranges
        )
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start <= end:
                raise ValueError(f"ranges {a} and {b} overlap (in their addresses or MACs)")
        names = [r.name for r in self.ranges]
        if len(set(names)) != len(names):
            raise ValueError("range names must be unique")
        return self


def mac_of(address: str) -> str:
    """The MAC of ``address``: 52:54:00 and the address's low three bytes."""
    low = IPv4Address(address).packed[1:]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in low)


class IPAM:
    """Allocates addresses and MACs from the configured ranges; runs dnsmasq if asked."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.config = IpamConfig()
        self.ranges: dict[str, Range] = {}
        self.held: dict[str, dict[str, dict[str, Any]]] = {}  # range -> address -> record
        self.servers: dict[str, Dnsmasq] = {}

    # --- set-up ------------------------------------------------------------------------

    @hookimpl
    async def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.config = IpamConfig.model_validate(config)
        self.ranges = {r.name: r for r in self.config.ranges}
        for name in self.ranges:
            records = await ctx.get(PLUGIN, f"range:{name}", [])
            self.held[name] = {rec["address"]: rec for rec in records}
        bridges: dict[str, list[IPv4Interface]] = {}
        for r in self.config.ranges:
            if r.dnsmasq if r.dnsmasq is not None else self.config.dnsmasq:
                bridges.setdefault(r.bridge, []).append(r.gateway_interface)
        for bridge, gateways in bridges.items():
            server = Dnsmasq(
                bridge,
                gateways,
                ctx.settings.state_dir / "dnsmasq" / bridge,
                dns_port=self.config.dns_port,
                domain=self.config.domain,
                lease_seconds=self.config.lease_seconds,
            )
            await asyncio.to_thread(server.start)
            self.servers[bridge] = server
            await asyncio.to_thread(server.update, self._leases(bridge))

    @hookimpl
    async def usher_shutdown(self) -> None:
        for server in self.servers.values():
            await asyncio.to_thread(server.stop)
        self.servers.clear()

    # --- allocating --------------------------------------------------------------------

    def _pick(self, request: OpRequest) -> Range:
        principal = request.principal
        wanted = request.kwargs.get("network")
        if wanted is not None:
            chosen = self.ranges.get(str(wanted))
            if chosen is None:
                known = ", ".join(self.ranges) or "none"
                raise Veto(f"there is no IP range {wanted!r} (ranges: {known})")
            if not chosen.admits(principal):
                raise Veto(
                    f"{principal.name} may not use IP range {chosen.name!r} "
                    f"(open to: {chosen.allow})"
                )
            return chosen
        for candidate in self.ranges.values():
            if candidate.admits(principal):
                return candidate
        raise Veto(f"no IP range is open to {principal.name}")

    def _holding(self, vm_id: str) -> tuple[Range, dict[str, Any]] | None:
        for name, records in self.held.items():
            for record in records.values():
                if record["vm_id"] == vm_id:
                    return self.ranges[name], record
        return None

    def _record(self, vm: VM, address: str, mac: str) -> dict[str, Any]:
        """What is kept of an allocation (and served by dnsmasq)."""
        fqdn = ".".join(p for p in (vm.name, vm.cluster, self.config.domain) if p)
        return {
            "address": address,
            "mac": mac,
            "vm_id": vm.id,
            "vm": vm.name,
            "cluster": vm.cluster,
            "owner": vm.owner,
            "fqdn": fqdn,
        }

    @staticmethod
    def _nic(r: Range, record: dict[str, Any]) -> dict[str, Any]:
        nic = {"mac": record["mac"], "network": f"bridge:{r.bridge}", "address": record["address"]}
        if r.vlan:
            nic["vlan"] = r.vlan
        return nic

    @hookimpl
    async def allocate_address(self, vm: VM, request: OpRequest) -> list[dict[str, Any]]:
        async with self.lock:
            held = self._holding(vm.id)
            if held is not None:
                return [self._nic(*held)]
            chosen = self._pick(request)
            taken = self.held[chosen.name]
            free = next((a for a in chosen.addresses() if a not in taken), None)
            if free is None:
                size = len(chosen.addresses())
                raise Veto(f"IP range {chosen.name!r} is full: all {size} addresses are in use")
            record = self._record(vm, free, mac_of(free))
            await self._save(chosen, {**taken, free: record})
            return [self._nic(chosen, record)]

    async def _save(self, r: Range, records: dict[str, dict[str, Any]]) -> None:
        """Persist the allocations of ``r``, then serve them (dnsmasq of its bridge)."""
        await self.ctx.put(PLUGIN, f"range:{r.name}", list(records.values()))
        self.held[r.name] = records
        server = self.servers.get(r.bridge)
        if server is not None:
            await asyncio.to_thread(server.update, self._leases(r.bridge))

    def _leases(self, bridge: str) -> list[Lease]:
        return [
            Lease(rec["mac"], rec["address"], rec["vm"], rec["fqdn"])
            for r in self.ranges.values()
            if r.bridge == bridge
            for rec in self.held[r.name].values()
        ]

    async def release(self, vm_id: str) -> None:
        """Give back the address of ``vm_id`` (nothing if it holds none)."""
        async with self.lock:
            held = self._holding(vm_id)
            if held is None:
                return
            r, record = held
            rest = {a: rec for a, rec in self.held[r.name].items() if a != record["address"]}
            await self._save(r, rest)

    @hookimpl
    async def guest_config(self, vm: VM, config: GuestConfig) -> None:
        """The guest's network: its address on its NIC (matched by MAC), the range's gateway
        as its default route and, where this plugin's dnsmasq serves the range, as its DNS
        server; its DNS name as its FQDN."""
        held = self._holding(vm.id)
        if held is None:
            return
        r, record = held
        nic: dict[str, Any] = {
            "match": {"macaddress": record["mac"]},
            "set-name": "eth0",
            "addresses": [f"{record['address']}/{r.network.prefixlen}"],
            "routes": [{"to": "0.0.0.0/0", "via": str(r.gateway)}],
        }
        if r.dnsmasq if r.dnsmasq is not None else self.config.dnsmasq:
            nic["nameservers"] = {"addresses": [str(r.gateway)], "search": [self.config.domain]}
        config.set_network({"version": 2, "ethernets": {"eth0": nic}})
        config.fqdn = record["fqdn"]

    @hookimpl
    async def release_address(self, vm: VM) -> None:
        await self.release(vm.id)

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        if event.name in RELEASING_EVENTS and event.vm_id:
            await self.release(event.vm_id)
        elif event.name == "vm_adopted" and event.vm_id:
            await self.adopt(event.vm_id)
        elif event.name == "vm_change" and event.vm_id and event.data.get("old_name"):
            await self.rename(event.vm_id)

    async def adopt(self, vm_id: str) -> None:
        """A VM adopted after a restore (made after the backup, so its address is free in
        the restored allocations) holds its address again; an address another VM took
        meanwhile stays with that VM, and an ``ipam_conflict`` event says so."""
        vm = await self.ctx.records.get_vm(vm_id)
        if vm is None:
            return
        async with self.lock:
            for nic in vm.spec.nics:
                address = nic.get("address")
                r = next((r for r in self.ranges.values() if address in r.addresses()), None)
                if r is None or not nic.get("mac"):
                    continue
                record = self.held[r.name].get(address)
                if record is None:
                    record = self._record(vm, address, nic["mac"])
                    await self._save(r, {**self.held[r.name], address: record})
                elif record["vm_id"] != vm.id:
                    await self.ctx.emit(
                        "ipam_conflict",
                        vm_id=vm.id,
                        data={
                            "address": address,
                            "holder_id": record["vm_id"],
                            "holder": record["vm"],
                        },
                    )

    async def rename(self, vm_id: str) -> None:
        """A renamed VM's address gets its new DNS name (and dnsmasq serves it)."""
        vm = await self.ctx.records.get_vm(vm_id)
        async with self.lock:
            held = self._holding(vm_id)
            if vm is None or held is None:
                return
            r, record = held
            renamed = self._record(vm, record["address"], record["mac"])
            await self._save(r, {**self.held[r.name], record["address"]: renamed})

    @hookimpl
    async def start_request(self, request: OpRequest) -> None:
        """VMs started again after a failed start take their old addresses back."""
        for vm_id in request.vm_ids:
            vm = await self.ctx.records.get_vm(vm_id)
            if vm is not None:
                await self._reclaim(vm)

    async def _reclaim(self, vm: VM) -> None:
        async with self.lock:
            for nic in vm.spec.nics:
                r = next(
                    (r for r in self.ranges.values() if nic.get("address") in r.addresses()),
                    None,
                )
                if r is None:
                    continue
                record = self.held[r.name].get(nic["address"])
                if record is not None and record["vm_id"] != vm.id:
                    raise Veto(
                        f"{vm.name}'s address {nic['address']} went to {record['vm']} after "
                        "its start failed; destroy it and start a new VM"
                    )
                if record is None:
                    record = self._record(vm, nic["address"], nic["mac"])
                    await self._save(r, {**self.held[r.name], nic["address"]: record})

    # --- routes ------------------------------------------------------------------------

    def usage(self, principal: Principal) -> list[dict[str, Any]]:
        out = []
        for r in self.ranges.values():
            size = len(r.addresses())
            used = len(self.held[r.name])
            out.append(
                {
                    **r.model_dump(mode="json", exclude={"allow", "dnsmasq"}),
                    "size": size,
                    "used": used,
                    "free": size - used,
                    "usable": r.admits(principal),
                    "dnsmasq": r.bridge in self.servers,
                }
            )
        return out

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/ipam", tags=["ipam"])

        @router.get("/ranges")
        async def ranges(principal: PrincipalDep) -> list[dict[str, Any]]:
            """Every range, how full it is and whether the caller may use it."""
            return self.usage(principal)

        @router.get("/allocations")
        async def allocations(ctx: ContextDep, principal: PrincipalDep) -> list[dict[str, Any]]:
            """Every address handed out, with its range, MAC, VM and DNS name (admins)."""
            await allow(ctx, principal, "ipam.allocations")
            if not principal.is_admin:
                raise Forbidden("only admins may list IP allocations")
            return [
                {"range": name, **rec}
                for name, records in self.held.items()
                for rec in sorted(records.values(), key=lambda x: IPv4Address(x["address"]))
            ]

        return [router]
