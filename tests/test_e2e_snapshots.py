"""Snapshots, clones and images from VMs through a real controller and fake LNMs: states,
names, duplicates, two at once, authorization, quotas, events and ``ush``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import _start
from harness import Cluster
from usher.client import Client, UsherError
from usher.model import OpStatus, VMState

QUOTAS = {"users": {"t1": {"snapshot_mb": 100}, "s1": {"snapshots": 1}}}
"""t1: one 64 MiB fake snapshot fits, two do not; s1: one snapshot."""


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory, db_kind: str) -> Iterator[Cluster]:
    """Two fake nodes (each snapshot holds 64 MiB; taking one takes 0.3 s), with authz,
    quotas, the users of ``Students`` and the event checker."""
    cluster = _start(
        tmp_path_factory.mktemp("snaps"),
        db_kind,
        2,
        {"driver_options": {"latency": {"snapshot_create": 0.3}}},
        plugins=["site_plugins:Students", "authz", "quotas", "event_check:EventCheck"],
        plugin_tables={"quotas": QUOTAS},
    )
    yield cluster
    cluster.stop()


def error_of(call: object) -> UsherError:
    with pytest.raises(UsherError) as err:
        call()  # type: ignore[operator]
    return err.value


def new_vm(cluster: Cluster, name: str, client: Client | None = None) -> str:
    op = cluster.run((client or cluster.client()).create_vms(names=[name]))
    assert op.status == OpStatus.SUCCEEDED, op.error
    return op.targets[0]


def test_snapshot_create_list_revert_rm_and_their_states(snaps: Cluster) -> None:
    c = snaps.client()
    vm = new_vm(snaps, "snap-a")
    op = snaps.run(c.snapshot_create("snap-a", "before"))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert op.kind == "snapshot" and op.targets == [vm]
    [snap] = c.snapshots("snap-a")
    assert (snap.name, snap.size_bytes, snap.running) == ("before", 64 * 2**20, True)
    assert c.get_vm(vm).state is VMState.RUNNING  # a snapshot leaves the VM as it was

    assert error_of(lambda: c.snapshot_create("snap-a", "before")).status == 409
    assert error_of(lambda: c.snapshot_create("snap-a", "bad name")).status == 422
    running = error_of(lambda: c.snapshot_revert("snap-a", "before"))
    assert running.status == 409 and "needs a VM that is stopped" in running.message
    assert error_of(lambda: c.snapshot_revert("snap-a", "nope")).status == 404
    assert error_of(lambda: c.snapshot_create("no-such-vm", "x")).status == 404

    assert snaps.run(c.stop(["snap-a"])).status == OpStatus.SUCCEEDED
    assert snaps.run(c.snapshot_create("snap-a", "stopped")).status == OpStatus.SUCCEEDED
    assert [s.running for s in c.snapshots("snap-a")] == [True, False]
    op = snaps.run(c.snapshot_revert("snap-a", "before"))
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert "disks reverted to snapshot before" in c.console(vm).data
    assert c.get_vm(vm).state is VMState.STOPPED

    assert snaps.run(c.snapshot_delete("snap-a", "before")).status == OpStatus.SUCCEEDED
    assert [s.name for s in c.snapshots("snap-a")] == ["stopped"]
    missing = error_of(lambda: c.snapshot_delete("snap-a", "before"))
    assert missing.status == 404 and "has no snapshot 'before'" in missing.message
    assert error_of(lambda: c.action("snapshot", ["snap-a"])).status == 422  # its own routes

    seen = snaps.http("GET", "/v1/event-check").json()
    assert not seen["wrong"], seen["wrong"]
    for name in ("snapshot_request", "snapshot", "snapshot_revert", "snapshot_delete"):
        assert seen["seen"].get(name), name


def test_snapshots_of_one_vm_are_taken_one_at_a_time(snaps: Cluster) -> None:
    """A snapshot asked while another of the VM is under way is refused (409), so the cap
    and the quotas checked on admission hold; each one taken is recorded, once."""
    c = snaps.client()
    new_vm(snaps, "snap-b")

    def take(name: str) -> object:
        try:
            return c.snapshot_create("snap-b", name)
        except UsherError as exc:
            return exc

    for names in (["one", "two", "three"], ["same", "same", "same"]):
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(take, names))
        for answer in answers:
            if isinstance(answer, UsherError):  # under way, or (same name) taken already
                assert answer.status == 409, answer.message
                assert "under way" in answer.message or "already" in answer.message
        taken = [snaps.run(a) for a in answers if not isinstance(a, UsherError)]
        assert taken and all(op.status == OpStatus.SUCCEEDED for op in taken)
    recorded = [s.name for s in c.snapshots("snap-b")]
    assert recorded.count("same") == 1 and len(recorded) == len(set(recorded))
    assert set(recorded) <= {"one", "two", "three", "same"}


def test_clone_from_a_stopped_vm_or_a_snapshot(snaps: Cluster) -> None:
    c = snaps.client()
    source_id = new_vm(snaps, "orig")
    refused = error_of(lambda: c.clone("orig", "copy-1"))
    assert refused.status == 409
    assert "stop it first, or name one of its snapshots" in refused.message
    assert snaps.run(c.snapshot_create("orig", "s")).status == OpStatus.SUCCEEDED

    op = snaps.run(c.clone("orig", "copy-1", snapshot="s"))  # a running source's snapshot
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert op.kind == "clone" and op.result["source"] == source_id
    source, copy = c.get_vm("orig"), c.get_vm("copy-1")
    assert copy.id != source.id and copy.state is VMState.RUNNING
    assert copy.owner == source.owner and copy.cluster == source.cluster
    assert copy.spec.nics[0]["mac"] != source.spec.nics[0]["mac"]  # its own NIC
    assert copy.snapshots == []

    assert snaps.run(c.stop(["orig"])).status == OpStatus.SUCCEEDED
    assert snaps.run(c.clone("orig", "copy-2")).status == OpStatus.SUCCEEDED
    assert error_of(lambda: c.clone("orig", "copy-2")).status == 409  # the name is taken
    assert error_of(lambda: c.clone("orig", "copy-3", snapshot="nope")).status == 404
    assert error_of(lambda: c.clone("orig", "vm-0123456789ab")).status == 422  # like an id
    assert c.get_vm("orig").state is VMState.STOPPED


def test_image_from_vm_then_create_from_it(snaps: Cluster) -> None:
    c = snaps.client()
    new_vm(snaps, "templ")
    assert error_of(lambda: c.image_from_vm("templ", "templ-img")).status == 409  # running
    assert snaps.run(c.stop(["templ"])).status == OpStatus.SUCCEEDED
    op = snaps.run(c.image_from_vm("templ", "templ-img", description="a template"))
    assert op.status == OpStatus.SUCCEEDED, op.error
    image = c.image("templ-img")
    assert image.description == "a template" and image.files["disk"] == "disk.qcow2"
    assert error_of(lambda: c.image_from_vm("templ", "templ-img")).status == 409  # taken
    op = snaps.run(c.create_vms(names=["from-templ"], image="templ-img"))
    assert op.status == OpStatus.SUCCEEDED, op.error


def test_users_snapshot_their_own_vms_within_their_quota(snaps: Cluster) -> None:
    t1, s1 = snaps.client("ush_t1"), snaps.client("ush_s1")
    new_vm(snaps, "t1-vm", t1)
    new_vm(snaps, "s1-vm", s1)
    assert error_of(lambda: t1.snapshot_create("s1-vm", "mine")).status == 404  # not visible
    assert error_of(lambda: t1.clone("s1-vm", "stolen")).status == 404

    assert snaps.run(t1.snapshot_create("t1-vm", "one")).status == OpStatus.SUCCEEDED
    over = error_of(lambda: t1.snapshot_create("t1-vm", "two"))
    assert over.status == 403
    assert "user t1 may have 100 MB of snapshots (snapshot_mb quota), holds 64" in over.message
    assert snaps.run(t1.snapshot_delete("t1-vm", "one")).status == OpStatus.SUCCEEDED
    assert snaps.run(t1.snapshot_create("t1-vm", "two")).status == OpStatus.SUCCEEDED

    assert snaps.run(s1.snapshot_create("s1-vm", "one")).status == OpStatus.SUCCEEDED
    over = error_of(lambda: s1.snapshot_create("s1-vm", "two"))
    assert "user s1 may have 1 snapshots (snapshots quota), holds 1" in over.message
    assert [s.name for s in s1.snapshots("s1-vm")] == ["one"]


def test_ush_snapshot_clone_and_image_from_vm(snaps: Cluster, tmp_path: Path) -> None:
    new_vm(snaps, "ush-src")

    def ush(*args: str) -> str:
        done = snaps.ush(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    ush("snapshot", "create", "ush-src", "first")
    listed = json.loads(ush("-o", "json", "snapshot", "list", "ush-src"))
    assert [s["name"] for s in listed] == ["first"]
    assert "first" in ush("snapshot", "list", "ush-src")
    ush("clone", "ush-src", "--name", "ush-copy", "--snapshot", "first")
    ush("image", "from-vm", "ush-src", "--name", "ush-img", "--snapshot", "first")
    ush("stop", "ush-src")
    ush("snapshot", "revert", "ush-src", "first")
    ush("snapshot", "rm", "ush-src", "first")
    assert json.loads(ush("-o", "json", "snapshot", "list", "ush-src")) == []
    missing = snaps.ush("snapshot", "rm", "ush-src", "first")
    assert missing.returncode != 0 and "has no snapshot 'first'" in missing.stderr
    assert snaps.client().get_vm("ush-copy").state is VMState.RUNNING
    assert snaps.client().image("ush-img").name == "ush-img"


def test_a_snapshot_name_of_digits_only_is_refused(snaps: Cluster) -> None:
    """qemu-img takes ``-a 1`` for the snapshot whose id is 1: such names never exist."""
    c = snaps.client()
    new_vm(snaps, "snap-digits")
    refused = error_of(lambda: c.snapshot_create("snap-digits", "1"))
    assert refused.status == 422 and "not all digits" in refused.message
    assert snaps.run(c.snapshot_create("snap-digits", "v1")).status == OpStatus.SUCCEEDED
