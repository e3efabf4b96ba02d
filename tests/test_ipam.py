"""The ipam plugin's allocator: ranges, access rules, exhaustion, release, concurrency and
persistence (on a real store), and its routes through a real controller."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from harness import Cluster, wait_for
from site_plugins import Alice
from usher import Veto
from usher.client import Client
from usher.ctrl.config import Settings
from usher.ctrl.context import PluginContext
from usher.ctrl.events import EventBus
from usher.ctrl.store import Store
from usher.guest_config import GuestConfig
from usher.model import VM, Event, OpKind, OpRequest, Principal, VMSpec
from usher.plugins.ipam import IPAM, IpamConfig, mac_of

LAB = {
    "name": "lab",
    "network": "10.213.9.0/24",
    "first": "10.213.9.1",  # the gateway: skipped
    "last": "10.213.9.4",
    "gateway": "10.213.9.1",
    "bridge": "usher-t-lab",
    "vlan": 12,
    "allow": {"roles": ["user"]},
}
STAFF = {
    "name": "staff",
    "network": "10.213.10.0/24",
    "first": "10.213.10.10",
    "last": "10.213.10.200",
    "gateway": "10.213.10.1",
    "bridge": "usher-t-staff",
    "allow": {"users": ["bob"], "groups": ["staff"]},
}
CONFIG = {"domain": "usher.test", "ranges": [LAB, STAFF]}
ALICE = Principal(name="alice", roles=["user"])
BOB = Principal(name="bob", roles=[])
CAROL = Principal(name="carol", roles=["user"], groups=["staff"])
ADMIN = Principal(name="root", roles=["admin"])


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    yield store
    await store.close()


async def ipam(store: Store, tmp_path: Path, config: dict[str, Any] = CONFIG) -> IPAM:
    plugin = IPAM()
    ctx = PluginContext(store=store, bus=EventBus(), settings=Settings(state_dir=tmp_path))
    await plugin.usher_configure(ctx, config)
    return plugin


def vm(n: int, cluster: str | None = "web") -> VM:
    return VM(id=f"vm-{n}", name=f"web-{n}", owner="alice", cluster=cluster, spec=VMSpec())


def start(principal: Principal, **kwargs: Any) -> OpRequest:
    return OpRequest(kind=OpKind.START, principal=principal, count=1, kwargs=kwargs)


async def test_addresses_macs_and_nics(store: Store, tmp_path: Path) -> None:
    plugin = await ipam(store, tmp_path)
    first = await plugin.allocate_address(vm(1), start(ALICE))
    assert first == [
        {
            "mac": "52:54:00:d5:09:02",
            "network": "bridge:usher-t-lab",
            "address": "10.213.9.2",
            "vlan": 12,
        }
    ]
    assert (await plugin.allocate_address(vm(1), start(ALICE))) == first  # asked again: same
    second = await plugin.allocate_address(vm(2, cluster=None), start(ALICE, network="lab"))
    assert second[0]["address"] == "10.213.9.3"
    staff = await plugin.allocate_address(vm(3), start(CAROL, network="staff"))
    assert staff[0] == {
        "mac": mac_of("10.213.10.10"),
        "network": "bridge:usher-t-staff",
        "address": "10.213.10.10",
    }
    records = {r["vm_id"]: r for r in await store.plugin_get("ipam", "range:lab")}
    assert records["vm-1"]["fqdn"] == "web-1.web.usher.test"
    assert records["vm-2"]["fqdn"] == "web-2.usher.test"


async def test_access_rules(store: Store, tmp_path: Path) -> None:
    plugin = await ipam(store, tmp_path)
    with pytest.raises(Veto, match="alice may not use IP range 'staff' \\(open to: users bob"):
        await plugin.allocate_address(vm(1), start(ALICE, network="staff"))
    with pytest.raises(Veto, match="there is no IP range 'dmz' \\(ranges: lab, staff\\)"):
        await plugin.allocate_address(vm(1), start(ALICE, network="dmz"))
    # bob has no role that lab admits, so his first usable range is staff
    nics = await plugin.allocate_address(vm(2), start(BOB))
    assert nics[0]["address"] == "10.213.10.10"
    with pytest.raises(Veto, match="no IP range is open to dave"):
        await plugin.allocate_address(vm(3), start(Principal(name="dave", roles=["user2"])))
    admin = await plugin.allocate_address(vm(4), start(ADMIN, network="staff"))
    assert admin[0]["address"] == "10.213.10.11"


async def test_exhaustion_and_release(store: Store, tmp_path: Path) -> None:
    plugin = await ipam(store, tmp_path)
    got = [(await plugin.allocate_address(vm(n), start(ALICE)))[0]["address"] for n in (1, 2, 3)]
    assert got == ["10.213.9.2", "10.213.9.3", "10.213.9.4"]
    with pytest.raises(Veto, match="IP range 'lab' is full: all 3 addresses are in use"):
        await plugin.allocate_address(vm(4), start(ALICE))
    await plugin.release_address(vm(2))
    await plugin.usher_event(Event(name="unregister", vm_id="vm-1"))
    await plugin.usher_event(Event(name="stop", vm_id="vm-3"))  # not a releasing event
    assert (await plugin.allocate_address(vm(5), start(ALICE)))[0]["address"] == "10.213.9.2"
    assert (await plugin.allocate_address(vm(6), start(ALICE)))[0]["address"] == "10.213.9.3"
    await plugin.usher_event(Event(name="start_failure", vm_id="vm-3"))
    assert (await plugin.allocate_address(vm(7), start(ALICE)))[0]["address"] == "10.213.9.4"


async def test_concurrent_requests_never_share_an_address(store: Store, tmp_path: Path) -> None:
    plugin = await ipam(store, tmp_path)

    async def one(n: int) -> str | None:
        try:
            nics = await plugin.allocate_address(vm(n), start(CAROL, network="staff"))
        except Veto:
            return None
        return nics[0]["address"]

    results = await asyncio.gather(*(one(n) for n in range(250)))
    given = [a for a in results if a is not None]
    assert len(given) == 191 and len(set(given)) == 191  # 10.213.10.10 - .200
    assert results.count(None) == 59
    stored = await store.plugin_get("ipam", "range:staff")
    assert sorted(r["address"] for r in stored) == sorted(given)


async def test_allocations_survive_a_restart(store: Store, tmp_path: Path) -> None:
    before = await ipam(store, tmp_path)
    for n in (1, 2):
        await before.allocate_address(vm(n), start(ALICE))
    after = await ipam(store, tmp_path)
    third = await after.allocate_address(vm(3), start(ALICE))
    assert third[0]["address"] == "10.213.9.4"
    await after.release_address(vm(1))
    again = await ipam(store, tmp_path)
    assert (await again.allocate_address(vm(4), start(ALICE)))[0]["address"] == "10.213.9.2"


async def test_restart_after_a_failed_start_reclaims_or_refuses(
    store: Store, tmp_path: Path
) -> None:
    plugin = await ipam(store, tmp_path)
    failed = vm(1)
    failed.spec.nics = await plugin.allocate_address(failed, start(ALICE))
    await store.add_vms([failed])
    await plugin.usher_event(Event(name="start_failure", vm_id=failed.id))
    again = OpRequest(kind=OpKind.START, principal=ALICE, vm_ids=[failed.id])
    await plugin.start_request(again)  # still free: taken back
    assert (await plugin.allocate_address(vm(2), start(ALICE)))[0]["address"] == "10.213.9.3"
    await plugin.usher_event(Event(name="start_failure", vm_id=failed.id))
    await plugin.allocate_address(vm(3), start(ALICE))  # takes 10.213.9.2
    with pytest.raises(Veto, match=r"web-1's address 10\.213\.9\.2 went to web-3"):
        await plugin.start_request(again)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"first": "10.213.8.5"}, "first is not in 10.213.9.0/24"),
        ({"first": "10.213.9.9", "last": "10.213.9.5"}, "first comes after last"),
        (
            {
                "network": "10.213.10.0/24",
                "gateway": "10.213.10.1",
                "first": "10.213.10.100",
                "last": "10.213.10.100",
            },
            "ranges staff and lab overlap",
        ),
        (
            {
                "network": "11.213.10.0/24",
                "gateway": "11.213.10.1",
                "first": "11.213.10.200",
                "last": "11.213.10.220",
            },
            "ranges staff and lab overlap",
        ),
        ({"name": "staff"}, "range names must be unique"),
    ],
)
def test_bad_configs_are_refused(change: dict[str, str], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        IpamConfig.model_validate({"ranges": [{**LAB, **change}, STAFF]})


@pytest.fixture
def routed(make_cluster) -> Cluster:
    lab = {**LAB, "first": "10.213.9.100", "last": "10.213.9.101", "allow": {"roles": ["admin"]}}
    return make_cluster(
        nodes=1,
        plugins=["site_plugins:Alice", "ipam"],
        plugin_tables={
            "ipam": {**CONFIG, "ranges": [lab, {**STAFF, "allow": {"roles": ["user"]}}]}
        },
    )


def test_routes_show_usage_and_allocations_to_admins(routed: Cluster) -> None:
    admin = routed.client()
    op = routed.run(admin.create_vms(count=2, cluster="web"))
    vms = [admin.get_vm(i) for i in op.targets]
    assert sorted(a for v in vms for a in v.addresses) == ["10.213.9.100", "10.213.9.101"]
    assert {v.spec.nics[0]["network"] for v in vms} == {"bridge:usher-t-lab"}
    alice = Client(routed.url, Alice.TOKEN)
    try:
        mine = routed.run(alice.create_vms(count=1, cluster="a"))
        assert alice.get_vm(mine.targets[0]).addresses == ["10.213.10.10"]
        ranges = {r["name"]: r for r in alice.request("GET", "/ipam/ranges")}
        assert (ranges["lab"]["used"], ranges["lab"]["free"], ranges["lab"]["usable"]) == (
            2,
            0,
            False,
        )
        assert (ranges["staff"]["used"], ranges["staff"]["usable"]) == (1, True)
        assert routed.http("GET", "/v1/ipam/allocations", token=Alice.TOKEN).status_code == 403
    finally:
        alice.close()
    listed = routed.http("GET", "/v1/ipam/allocations").json()
    assert [(a["range"], a["address"], a["vm"]) for a in listed] == [
        ("lab", "10.213.9.100", "web-1"),
        ("lab", "10.213.9.101", "web-2"),
        ("staff", "10.213.10.10", "a-1"),
    ]
    routed.run(admin.destroy(cluster="web"))
    wait_for(
        "the addresses back",
        lambda: [a["vm"] for a in routed.http("GET", "/v1/ipam/allocations").json()] == ["a-1"],
    )


async def test_guests_get_their_address_as_cloud_init_network_config(
    store: Store, tmp_path: Path
) -> None:
    plugin = await ipam(store, tmp_path, {**CONFIG, "dnsmasq": False})
    await plugin.allocate_address(vm(1), start(ALICE))
    config = GuestConfig("vm-1", "web-1")
    await plugin.guest_config(vm(1), config)
    assert config.network == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": "52:54:00:d5:09:02"},
                "set-name": "eth0",
                "addresses": ["10.213.9.2/24"],
                # cloud-init 22.4 (Debian 12) refuses "to: default"
                "routes": [{"to": "0.0.0.0/0", "via": "10.213.9.1"}],
            }
        },
    }
    assert config.fqdn == "web-1.web.usher.test"
    untouched = GuestConfig("vm-9", "web-9")
    await plugin.guest_config(vm(9), untouched)  # holds no address: left to DHCP
    assert untouched.network is None and untouched.fqdn is None


async def test_an_adopted_vm_holds_its_address_again_unless_another_took_it(
    store: Store, tmp_path: Path
) -> None:
    """After a restore, a VM adopted from its node (``vm_adopted``) takes back the address
    it has; one another VM holds meanwhile stays with that VM: ``ipam_conflict``."""
    bus = EventBus()
    seen: list[Event] = []

    async def notify(event: Event) -> None:
        seen.append(event)

    bus.notifier = notify
    plugin = IPAM()
    ctx = PluginContext(store=store, bus=bus, settings=Settings(state_dir=tmp_path))
    await plugin.usher_configure(ctx, CONFIG)
    holder = vm(1)
    await plugin.allocate_address(holder, start(ALICE))  # 10.213.9.2
    nic = {"mac": mac_of("10.213.9.3"), "network": "bridge:usher-t-lab", "address": "10.213.9.3"}
    clash = {**nic, "mac": mac_of("10.213.9.2"), "address": "10.213.9.2"}
    back = vm(2).model_copy(update={"spec": VMSpec(nics=[nic]), "addresses": ["10.213.9.3"]})
    other = vm(3).model_copy(update={"spec": VMSpec(nics=[clash]), "addresses": ["10.213.9.2"]})
    await store.add_vms([holder, back, other])
    for adopted in (back, other):
        await plugin.usher_event(Event(name="vm_adopted", vm_id=adopted.id, data={}))
    held = {r["address"]: r["vm_id"] for r in await store.plugin_get("ipam", "range:lab")}
    assert held == {"10.213.9.2": "vm-1", "10.213.9.3": "vm-2"}
    conflicts = [e for e in seen if e.name == "ipam_conflict"]
    assert [(e.vm_id, e.data) for e in conflicts] == [
        ("vm-3", {"address": "10.213.9.2", "holder_id": "vm-1", "holder": "web-1"})
    ]
    assert (await plugin.allocate_address(vm(4), start(ALICE)))[0]["address"] == "10.213.9.4"
