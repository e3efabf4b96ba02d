"""The ``dns`` plugin against a real BIND 9 (``tests/bind_server.py``): VMs started through a
real controller with ``ipam`` get A and PTR records that real lookups answer, lose them when
renamed or destroyed; a nameserver that is down, restarted or holds another key never fails
a VM's operation, gives ``dns_failure`` events, and gets the updates later on its own, also
across a controller restart."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bind_server import KEY_NAME, Bind
from dns_proxy import Proxy
from harness import Cluster, free_port, wait_for
from usher.ctrl.config import Settings
from usher.ctrl.context import PluginContext
from usher.ctrl.events import EventBus
from usher.ctrl.store import Store
from usher.model import VM, Event, OpKind, OpStatus, VMSpec, VMState
from usher.plugins.dns_config import DnsConfig
from usher.plugins.dns_names import BadName, changes, reverse_name, vm_names, zone_of
from usher.plugins.dns_pending import Change, Ledger, Names
from usher.plugins.dns_update import DnsUpdate

FORWARD = "usher.test"
REVERSE = "9.213.10.in-addr.arpa"
IPAM = {
    "domain": FORWARD,
    "ranges": [
        {
            "name": "lab",
            "network": "10.213.9.0/24",
            "first": "10.213.9.10",
            "last": "10.213.9.60",
            "gateway": "10.213.9.1",
            "bridge": "usher-t-dns",
        }
    ],
}
FAST = {"timeout": 1.0, "retry_interval": 0.2, "retry_max": 1.0, "ttl": 30}
SECRET = base64.b64encode(b"k" * 32).decode()


@pytest.fixture
def bind(tmp_path: Path) -> Iterator[Bind]:
    server = Bind(tmp_path / "bind", FORWARD, REVERSE)
    server.start()
    yield server
    server.stop()


def dns_table(bind: Bind, **extra: Any) -> dict[str, Any]:
    return {
        "server": "127.0.0.1",
        "port": bind.port,
        "domain": FORWARD,
        "reverse_zones": [REVERSE],
        **FAST,
        **extra,
    }


def with_dns(
    make_cluster: Callable[..., Cluster], table: dict[str, Any], nodes: int = 1
) -> Cluster:
    return make_cluster(
        nodes=nodes,
        plugins=["event_check:EventCheck", "ipam", "dns"],
        plugin_tables={"ipam": IPAM, "dns": table},
    )


def ok(cluster: Cluster, op: Any) -> list[str]:
    done = cluster.run(op)
    assert done.status == OpStatus.SUCCEEDED, done.error
    return done.targets


def failures(cluster: Cluster, check: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The ``dns_failure`` events' data that pass ``check``, once there is one."""
    client = cluster.client()

    def found() -> list[dict[str, Any]]:
        return [e.data for e in client.iter_events(name="dns_failure") if check(e.data)]

    return wait_for("a dns_failure event", found, timeout=20)


def resolves(bind: Bind, name: str, rdtype: str, expected: list[str] | None) -> None:
    wait_for(
        f"{rdtype} {name} to be {expected}",
        lambda: bind.resolve(name, rdtype) == expected,
        timeout=20,
    )


def no_wrong_events(cluster: Cluster) -> None:
    assert cluster.http("GET", "/v1/event-check").json()["wrong"] == []


def test_records_follow_the_vms(bind: Bind, make_cluster: Callable[..., Cluster]) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_file=str(bind.key_file)), nodes=2)
    client = cluster.client()
    vms = [client.get_vm(i) for i in ok(cluster, client.create_vms(count=12, cluster="web"))]
    for vm in vms:
        fqdn = f"{vm.name}.web.{FORWARD}."
        resolves(bind, fqdn, "A", vm.addresses)
        resolves(bind, reverse_name(vm.addresses[0]), "PTR", [fqdn])
    first = vms[0]
    assert bind.dig(f"{first.name}.web.{FORWARD}") == first.addresses[0]  # what dig sees
    assert bind.dig("-x", first.addresses[0]) == f"{first.name}.web.{FORWARD}."

    (solo,) = [client.get_vm(i) for i in ok(cluster, client.create_vms(names=["solo"]))]
    resolves(bind, f"solo.{FORWARD}.", "A", solo.addresses)

    client.change_vm(first.id, name="front")
    resolves(bind, f"front.web.{FORWARD}.", "A", first.addresses)
    resolves(bind, reverse_name(first.addresses[0]), "PTR", [f"front.web.{FORWARD}."])
    resolves(bind, f"{first.name}.web.{FORWARD}.", "A", None)

    # a name that is no DNS label: the VM runs, an event says why it has no record
    (odd,) = ok(cluster, client.create_vms(names=["odd_name"], cluster="web"))
    assert client.get_vm(odd).state == "running"
    (event,) = failures(cluster, lambda d: d["name"].startswith("odd_name"))
    assert event["retry_in"] is None and event["action"] == "add"
    assert "'odd_name' is not a DNS label" in event["error"]

    ok(cluster, client.destroy(cluster="web"))
    for vm in vms:
        resolves(bind, reverse_name(vm.addresses[0]), "PTR", None)
    for name in ("front", *(vm.name for vm in vms[1:])):
        resolves(bind, f"{name}.web.{FORWARD}.", "A", None)
    assert bind.resolve(f"solo.{FORWARD}.", "A") == solo.addresses
    no_wrong_events(cluster)


def test_names_that_differ_only_in_case_keep_the_first_vms_records(
    bind: Bind, make_cluster: Callable[..., Cluster]
) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_name=KEY_NAME, key_secret=bind.secret))
    client = cluster.client()
    (first,) = [
        client.get_vm(i) for i in ok(cluster, client.create_vms(names=["Twin"], cluster="web"))
    ]
    fqdn = f"twin.web.{FORWARD}."
    resolves(bind, fqdn, "A", first.addresses)
    (second,) = [
        client.get_vm(i) for i in ok(cluster, client.create_vms(names=["twin"], cluster="web"))
    ]
    (event,) = failures(cluster, lambda d: d["name"] == fqdn)
    assert event["retry_in"] is None and "is VM Twin's name in DNS" in event["error"]
    assert bind.resolve(reverse_name(second.addresses[0]), "PTR") is None
    ok(cluster, client.destroy([second.id]))
    (late,) = [
        client.get_vm(i) for i in ok(cluster, client.create_vms(names=["late"], cluster="web"))
    ]
    resolves(bind, f"late.web.{FORWARD}.", "A", late.addresses)  # the destroy went through
    assert bind.resolve(fqdn, "A") == first.addresses  # the destroy of the other took nothing
    assert bind.resolve(reverse_name(first.addresses[0]), "PTR") == [fqdn]
    no_wrong_events(cluster)


def test_a_failed_start_takes_the_records_away_and_a_new_start_brings_them_back(
    bind: Bind, make_cluster: Callable[..., Cluster]
) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_name=KEY_NAME, key_secret=bind.secret))
    cluster.start_lnm("node-2", driver_options={"fail": {"start": 1.0}})
    client = cluster.client()
    fqdn = f"broken.web.{FORWARD}."
    op = cluster.run(client.create_vms(names=["broken"], cluster="web", node="node-2"))
    assert op.status == OpStatus.FAILED
    (vm,) = [client.get_vm(i) for i in op.targets]
    address = vm.spec.nics[0]["address"]
    events = [e.name for e in client.iter_events(vm=vm.id)]
    assert "register" in events and "start_failure" in events
    resolves(bind, fqdn, "A", None)
    resolves(bind, reverse_name(address), "PTR", None)
    ok(cluster, client.action(OpKind.START, [vm.id], target_node="node-1"))
    resolves(bind, fqdn, "A", [address])
    resolves(bind, reverse_name(address), "PTR", [fqdn])
    no_wrong_events(cluster)


async def test_a_removal_supersedes_an_add_under_way(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    try:
        ledger = Ledger(PluginContext(store=store, bus=EventBus(), settings=Settings()))
        names = Names("web-1.usher.test.", ("10.0.0.2",))
        await ledger.set_names("vm-1", names, lambda old, new: changes("vm-1", old, new))
        under_way = await ledger.pending()
        assert [(e["key"], e["values"]) for e in under_way] == [
            ("A web-1.usher.test.", ["10.0.0.2"]),
            ("PTR 2.0.0.10.in-addr.arpa.", ["web-1.usher.test."]),
        ]
        await ledger.set_names("vm-1", None, lambda old, new: changes("vm-1", old, new))
        for entry in under_way:  # the adds were made meanwhile: their success settles nothing
            await ledger.settle(entry)
        assert [(e["key"], e["values"]) for e in await ledger.pending()] == [
            ("A web-1.usher.test.", []),
            ("PTR 2.0.0.10.in-addr.arpa.", []),
        ]
        assert await ledger.published("vm-1") is None
        kept = await ledger.postpone(under_way[:1], lambda attempts: 30.0 * attempts)
        assert kept == []  # a failure of the replaced add counts against nothing
        removal = await ledger.pending()
        kept = await ledger.postpone(removal[:1], lambda attempts: 30.0 * attempts)
        assert kept[0]["attempts"] == 1 and kept[0]["due"] > time.time() + 25
        await ledger.settle(removal[1])
        assert [e["key"] for e in await ledger.pending()] == ["A web-1.usher.test."]
    finally:
        await store.close()


async def test_a_failed_pass_is_tried_again_on_its_own(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    plugin = DnsUpdate()
    passes: list[bool] = []

    async def flaky(everything: bool) -> None:
        passes.append(everything)
        if len(passes) == 1:
            raise RuntimeError("the database went away")

    plugin._pass = flaky  # type: ignore[method-assign]
    config = {"server": "127.0.0.1", "key_name": "k", "key_secret": SECRET, "retry_interval": 0.05}
    try:
        await plugin.usher_configure(
            PluginContext(store=store, bus=EventBus(), settings=Settings()), config
        )
        for _ in range(100):
            if len(passes) >= 2:
                break
            await asyncio.sleep(0.02)
        assert passes[:2] == [True, True]  # no event woke it; a restart's pass is redone
    finally:
        await plugin.usher_shutdown()
        await store.close()


async def test_a_restart_catches_up_with_events_a_crash_lost(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    ctx = PluginContext(store=store, bus=EventBus(), settings=Settings())

    def vm(vm_id: str, name: str, state: VMState, address: str) -> VM:
        return VM(
            id=vm_id, name=name, owner="alice", cluster="web", spec=VMSpec(), state=state,
            addresses=[address],
        )  # fmt: skip

    await store.add_vms(
        [
            vm("vm-new", "new", VMState.RUNNING, "10.0.0.2"),  # its register was lost
            vm("vm-moved", "moved", VMState.RUNNING, "10.0.0.3"),  # its rename was lost
            vm("vm-failed", "failed", VMState.STOPPED, "10.0.0.4"),  # start failed: no names
        ]
    )
    ledger = Ledger(ctx)
    for vm_id, names in (
        ("vm-moved", Names(f"before.web.{FORWARD}.", ("10.0.0.3",))),
        ("vm-gone", Names(f"gone.web.{FORWARD}.", ("10.0.0.5",))),  # its unregister was lost
    ):
        await ledger.set_names(vm_id, names, lambda old, new, i=vm_id: changes(i, old, new))
    for entry in await ledger.pending():
        await ledger.settle(entry)  # made before the crash
    plugin = DnsUpdate()
    config = {"server": "127.0.0.1", "port": free_port(), "domain": FORWARD}
    try:
        await plugin.usher_configure(ctx, {**config, "key_name": "k", "key_secret": SECRET})
        assert await ledger.all_published() == {
            "vm-new": Names(f"new.web.{FORWARD}.", ("10.0.0.2",)),
            "vm-moved": Names(f"moved.web.{FORWARD}.", ("10.0.0.3",)),
        }
        assert {e["key"]: e["values"] for e in await ledger.pending()} == {
            f"A new.web.{FORWARD}.": ["10.0.0.2"],
            "PTR 2.0.0.10.in-addr.arpa.": [f"new.web.{FORWARD}."],
            f"A before.web.{FORWARD}.": [],
            f"A moved.web.{FORWARD}.": ["10.0.0.3"],
            "PTR 3.0.0.10.in-addr.arpa.": [f"moved.web.{FORWARD}."],
            f"A gone.web.{FORWARD}.": [],
            "PTR 5.0.0.10.in-addr.arpa.": [],
        }
    finally:
        await plugin.usher_shutdown()
        await store.close()


async def test_a_vm_adopted_after_a_restore_gets_its_names(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    ctx = PluginContext(store=store, bus=EventBus(), settings=Settings())
    plugin = DnsUpdate()
    config = {"server": "127.0.0.1", "port": free_port(), "domain": FORWARD}
    try:
        await plugin.usher_configure(ctx, {**config, "key_name": "k", "key_secret": SECRET})
        adopted = VM(
            id="vm-1", name="late", owner="alice", cluster="web", spec=VMSpec(),
            state=VMState.RUNNING, addresses=["10.0.0.2"],
        )  # fmt: skip
        await store.add_vms([adopted])
        data = {"name": "late", "owner": "alice", "cluster": "web", "state": "running"}
        event = Event(name="vm_adopted", vm_id="vm-1", data={**data, "addresses": ["10.0.0.2"]})
        await plugin.usher_event(event)
        assert await Ledger(ctx).all_published() == {
            "vm-1": Names(f"late.web.{FORWARD}.", ("10.0.0.2",))
        }
    finally:
        await plugin.usher_shutdown()
        await store.close()


async def test_updates_made_are_settled_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'usher.db'}")
    await store.open()
    ctx = PluginContext(store=store, bus=EventBus(), settings=Settings())
    ledger = Ledger(ctx)
    addresses = [f"10.0.{n // 256}.{n % 256}" for n in range(150)]  # 300 record sets
    running = VMState.RUNNING
    vms = [
        VM(id=f"vm-{n}", name=f"vm-{n}", owner="a", spec=VMSpec(), state=running, addresses=[a])
        for n, a in enumerate(addresses)
    ]
    await store.add_vms(vms)
    for vm in vms:
        names = vm_names(vm.name, None, FORWARD, vm.addresses)
        await ledger.set_names(vm.id, names, lambda old, new, i=vm.id: changes(i, old, new))
    sent: list[str] = []

    async def send(config: DnsConfig, zone: str, entry: dict[str, Any]) -> None:
        sent.append(entry["key"])

    monkeypatch.setattr("usher.plugins.dns_update.send", send)
    writes = 0
    atomically = ctx.atomically

    async def counted(plugin: str, change: Any) -> Any:
        nonlocal writes
        writes += 1
        return await atomically(plugin, change)

    monkeypatch.setattr(ctx, "atomically", counted)
    plugin = DnsUpdate()
    config = {"server": "127.0.0.1", "domain": FORWARD, "reverse_zones": ["10.in-addr.arpa"]}
    try:
        await plugin.usher_configure(ctx, {**config, "key_name": "k", "key_secret": SECRET})
        for _ in range(200):
            if not await ledger.pending():
                break
            await asyncio.sleep(0.05)
        assert len(sent) == 300 and await ledger.pending() == []
        assert writes <= 4  # not one rewrite of all the pending updates per update made
    finally:
        await plugin.usher_shutdown()
        await store.close()


def test_a_nameserver_away_never_fails_a_vm_and_gets_its_updates_later(
    bind: Bind, make_cluster: Callable[..., Cluster]
) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_name=KEY_NAME, key_secret=bind.secret))
    client = cluster.client()
    bind.stop()
    late, gone = ok(cluster, client.create_vms(names=["late", "gone"], cluster="web"))
    down = failures(cluster, lambda d: "unreachable" in d["error"])
    assert down[0]["retry_in"] > 0 and down[0]["waiting"] >= 1
    assert f"127.0.0.1:{bind.port}" in down[0]["error"]
    ok(cluster, client.destroy([gone]))  # its add, never made, is superseded by its removal
    bind.start()
    late_vm = client.get_vm(late)
    resolves(bind, f"late.web.{FORWARD}.", "A", late_vm.addresses)
    resolves(bind, reverse_name(late_vm.addresses[0]), "PTR", [f"late.web.{FORWARD}."])
    assert bind.resolve(f"gone.web.{FORWARD}.", "A") is None

    # pending updates survive a controller restart
    bind.stop()
    (after,) = ok(cluster, client.create_vms(names=["after"], cluster="web"))
    failures(cluster, lambda d: d["name"] == f"after.web.{FORWARD}.")
    cluster.kill_ctrl()
    bind.start()
    cluster.start_ctrl()
    resolves(bind, f"after.web.{FORWARD}.", "A", cluster.client().get_vm(after).addresses)
    no_wrong_events(cluster)


def test_a_wrong_tsig_secret_is_an_event_and_is_retried(
    bind: Bind, make_cluster: Callable[..., Cluster]
) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_name=KEY_NAME, key_secret=SECRET))
    client = cluster.client()
    (vm,) = ok(cluster, client.create_vms(names=["keyed"], cluster="web"))
    assert client.get_vm(vm).state == "running"
    again = failures(cluster, lambda d: d["name"] == f"keyed.web.{FORWARD}." and d["attempts"] >= 2)
    assert "(BADSIG): its secret is not the server's" in again[0]["error"]
    assert again[0]["retry_in"] > 0
    assert bind.resolve(f"keyed.web.{FORWARD}.", "A") is None
    no_wrong_events(cluster)


def test_a_rejected_key_is_one_event_per_try_for_all_the_updates(
    bind: Bind, make_cluster: Callable[..., Cluster]
) -> None:
    cluster = with_dns(make_cluster, dns_table(bind, key_name="unknown-key", key_secret=SECRET))
    client = cluster.client()
    ok(cluster, client.create_vms(names=["unkeyed"], cluster="web"))  # its A and PTR at once
    failures(cluster, lambda d: d["attempts"] >= 2)
    first = [e.data for e in client.iter_events(name="dns_failure") if e.data["attempts"] == 1]
    assert len(first) == 1, first  # not one per record set
    assert "does not know TSIG key unknown-key (BADKEY)" in first[0]["error"]
    assert first[0]["waiting"] == 2
    no_wrong_events(cluster)


@pytest.fixture
def proxy(bind: Bind) -> Iterator[Proxy]:
    server = Proxy(bind.port)
    yield server
    server.stop()


def test_a_nameserver_that_hangs_up_is_an_event_and_is_retried(
    bind: Bind, proxy: Proxy, make_cluster: Callable[..., Cluster]
) -> None:
    proxy.hangup = True
    table = dns_table(bind, key_name=KEY_NAME, key_secret=bind.secret, port=proxy.port)
    cluster = with_dns(make_cluster, table)
    client = cluster.client()
    (vm,) = ok(cluster, client.create_vms(names=["hung"], cluster="web"))
    fqdn = f"hung.web.{FORWARD}."
    again = failures(cluster, lambda d: d["name"] == fqdn and d["attempts"] >= 2)
    assert "closed the connection without answering" in again[0]["error"]
    assert again[0]["retry_in"] > 0
    proxy.hangup = False  # the updates still pending go through on their own
    resolves(bind, fqdn, "A", client.get_vm(vm).addresses)
    no_wrong_events(cluster)


def test_a_nameserver_that_answers_garbage_is_one_event_per_try(
    bind: Bind, proxy: Proxy, make_cluster: Callable[..., Cluster]
) -> None:
    proxy.garbage = True
    table = dns_table(bind, key_name=KEY_NAME, key_secret=bind.secret, port=proxy.port)
    cluster = with_dns(make_cluster, table)
    client = cluster.client()
    (vm,) = ok(cluster, client.create_vms(names=["noise"], cluster="web"))  # its A and PTR
    failures(cluster, lambda d: d["attempts"] >= 2)
    first = [e.data for e in client.iter_events(name="dns_failure") if e.data["attempts"] == 1]
    assert len(first) == 1 and first[0]["waiting"] == 2, first
    assert "gave no usable answer: ShortHeader" in first[0]["error"]
    proxy.garbage = False
    resolves(bind, f"noise.web.{FORWARD}.", "A", client.get_vm(vm).addresses)
    no_wrong_events(cluster)


# --- the parts, without servers ---------------------------------------------------------


def test_names_of_a_vm_and_what_changes() -> None:
    names = vm_names("Web-1", "lab", "usher.test", ["10.0.0.2"])
    assert names == Names("web-1.lab.usher.test.", ("10.0.0.2",))
    assert vm_names("solo", None, "usher.test.", ["10.0.0.3"]).fqdn == "solo.usher.test."
    for bad in ("web_1", "a.b", "-x", "x-", "y" * 64):
        with pytest.raises(BadName, match="is not a DNS label"):
            vm_names(bad, None, "usher.test", ["10.0.0.2"])
    with pytest.raises(BadName, match="is longer than a DNS name may be"):
        vm_names("a" * 63, "b" * 63, "c" * 63 + "." + "d" * 63, ["10.0.0.2"])
    with pytest.raises(BadName, match="cluster name 'my_cluster'"):
        vm_names("ok", "my_cluster", "usher.test", ["10.0.0.2"])
    renamed = Names("front.lab.usher.test.", ("10.0.0.2",))
    assert changes("vm-1", names, renamed) == [
        Change("A", "web-1.lab.usher.test.", (), "vm-1"),
        Change("A", "front.lab.usher.test.", ("10.0.0.2",), "vm-1"),
        Change("PTR", "2.0.0.10.in-addr.arpa.", ("front.lab.usher.test.",), "vm-1"),
    ]
    assert changes("vm-1", names, names) == []
    assert changes("vm-1", names, None) == [
        Change("A", "web-1.lab.usher.test.", (), "vm-1"),
        Change("PTR", "2.0.0.10.in-addr.arpa.", (), "vm-1"),
    ]
    assert zone_of("a.b.usher.test.", ["usher.test.", "b.usher.test."]) == "b.usher.test."
    assert zone_of("a.other.", ["usher.test."]) is None


def test_a_key_file_from_tsig_keygen(tmp_path: Path) -> None:
    keys = tmp_path / "keys.conf"
    keys.write_text(
        f'key "one" {{\n\talgorithm hmac-sha512;\n\tsecret "{SECRET}";\n}};\n'
        f'key "two" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
    )
    config = DnsConfig.model_validate(
        {"server": "127.0.0.1", "key_file": str(keys), "key_name": "two"}
    )
    assert (config.key_name, config.key_algorithm) == ("two", "hmac-sha256")
    with pytest.raises(ValidationError, match="holds several keys \\(one, two\\): set key_name"):
        DnsConfig.model_validate({"server": "127.0.0.1", "key_file": str(keys)})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"key_secret": None}, "a TSIG key is needed: key_name and key_secret, or key_file"),
        ({"key_secret": "not base64!"}, "the TSIG secret is not base64"),
        ({"key_secret": ""}, "the TSIG secret is empty"),
        (
            {"key_secret": None, "key_file": "/nonexistent/key"},
            "cannot read TSIG key file /nonexistent/key",
        ),
        ({"key_algorithm": "rot13"}, "key_algorithm"),
        ({"server": "ns.example.org"}, "server"),
        ({"port": 0}, "port"),
        ({"domain": "usher.test", "forward_zones": ["other.test"]}, "in none of the forward"),
        ({"reverse_zones": ["usher.test"]}, "not under in-addr.arpa or ip6.arpa"),
        ({"retry_interval": 60, "retry_max": 10}, "retry_max is shorter than retry_interval"),
        ({"ttl": -1}, "ttl"),
        ({"zone": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_configs_are_refused(change: dict[str, Any], error: str) -> None:
    good = {"server": "127.0.0.1", "key_name": "k", "key_secret": SECRET}
    with pytest.raises(ValidationError, match=error):
        DnsConfig.model_validate({**good, **change})
