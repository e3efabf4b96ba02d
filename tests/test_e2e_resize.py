"""Disk sizes at create and ``resize`` through a real controller and fake LNMs: what is
recorded, what the nodes are asked, and every refusal (wrong state, no room, quota, bad
input), with nothing changed after a refusal."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from harness import Cluster
from usher.client import UsherError
from usher.model import OpStatus, VMState


def create(cluster: Cluster, name: str, **kwargs: object) -> str:
    client = cluster.client()
    op = cluster.run(client.create_vms(names=[name], **kwargs))
    assert op.status == OpStatus.SUCCEEDED, op.error
    return op.targets[0]


def resize(cluster: Cluster, vm: str, **kwargs: object) -> None:
    op = cluster.run(cluster.client().resize_vm(vm, **kwargs))
    assert op.status == OpStatus.SUCCEEDED, op.error


def refused(status: int, match: str, call: Callable[[], object]) -> None:
    with pytest.raises(UsherError) as caught:
        call()
    assert caught.value.status == status, caught.value
    assert match in str(caught.value), caught.value


def test_disk_sizes_at_create_and_resizes(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1)
    client = cluster.client()
    vm = create(cluster, "disky", disk_gb=2, disks=[1, 3])
    record = client.get_vm(vm)
    assert record.spec.disk_gb == 2 and record.spec.disks == [{"size_gb": 1}, {"size_gb": 3}]

    # running: disks grow (the fake guest sees it), vCPUs and memory do not change
    resize(cluster, vm, grow={1: 2, 0: 1})
    record = client.get_vm(vm)
    assert record.spec.disk_gb == 3 and record.spec.disks == [{"size_gb": 3}, {"size_gb": 3}]
    assert record.state is VMState.RUNNING
    assert "vdb: detected capacity change to 3 GiB" in client.console(vm).data
    refused(409, "stop it first", lambda: client.resize_vm(vm, vcpus=2))
    assert client.get_vm(vm).spec.vcpus == 1

    # stopped: vCPUs and memory, which the next boot has
    cluster.run(client.stop([vm]))
    resize(cluster, vm, vcpus=4, memory_mb=512, grow={2: 1})
    record = client.get_vm(vm)
    assert (record.spec.vcpus, record.spec.memory_mb, record.spec.disks[1]) == (
        4,
        512,
        {"size_gb": 4},
    )
    cluster.run(client.start_existing([vm]))
    assert "with 4 vCPUs, 512 MB" in client.console(vm).data

    events = client.events(name="resize", vm=vm).items
    assert events and events[-1].data["vcpus"] == 4
    assert events[-1].data["disks"] == [{"size_gb": 3}, {"size_gb": 4}]


def test_a_root_disk_at_its_image_size_grows_from_that_size(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(nodes=1)
    vm = create(cluster, "plain")
    assert cluster.client().get_vm(vm).spec.disk_gb is None
    resize(cluster, vm, grow={0: 1})  # the blank image is 16 MiB: 1 GiB, rounded up
    assert cluster.client().get_vm(vm).spec.disk_gb == 2


def test_resizes_that_do_not_fit_or_make_no_sense_change_nothing(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        nodes=1, plugins=["quotas"], plugin_tables={"quotas": {"default": {"disk_gb": 20}}}
    )
    client = cluster.client()
    vm = create(cluster, "small", disks=[8])
    other = create(cluster, "big", vcpus=6)
    cluster.run(client.stop([vm]))
    before = client.get_vm(vm).spec

    refused(409, "would not fit node node-1", lambda: client.resize_vm(vm, vcpus=3))
    refused(403, "disk_gb quota", lambda: client.resize_vm(vm, grow={1: 13}))
    refused(403, "disk_gb quota", lambda: client.create_vms(names=["more"], disks=[13]))
    refused(422, "no disk 2", lambda: client.resize_vm(vm, grow={2: 1}))
    refused(422, "more than the 16384 GiB", lambda: client.resize_vm(vm, grow={1: 16380}))
    refused(422, "say what to resize", lambda: client.resize_vm(vm))
    refused(422, "grow_gb", lambda: client.resize_vm(vm, grow={1: 0}))
    refused(422, "grow_gb", lambda: client.resize_vm(vm, grow={1: -1}))
    as_action = cluster.http("POST", "/v1/vms/actions/resize", json={"vms": [vm]})
    assert as_action.status_code == 422 and "not an action on many VMs" in as_action.text
    for body in (
        {"disks": [{"disk": 1, "grow_gb": 1}, {"disk": 1, "grow_gb": 1}]},
        {"disks": [{"disk": 1, "grow_gb": "1G"}]},
        {"disks": [{"disk": 1, "grow_gb": 2**70}]},
        {"vcpus": 2, "shrink": True},
    ):
        answer = cluster.http("POST", f"/v1/vms/{vm}/resize", json=body)
        assert answer.status_code == 422, (body, answer.text)
    bad_create = cluster.http("POST", "/v1/vms", json={"disks": [{"size_gb": 1, "x": 2}]})
    assert bad_create.status_code == 422 and "size_gb" in bad_create.text
    assert client.get_vm(vm).spec == before

    cluster.run(client.stop([other]))  # now there is room
    resize(cluster, vm, vcpus=3)
    assert client.get_vm(vm).spec.vcpus == 3


def test_two_resizes_at_once_one_waits_its_turn(make_cluster: Callable[..., Cluster]) -> None:
    """One resize of a VM at a time: a second asked while the first runs is refused (what
    quotas checked must still hold when it runs); asked again afterwards, it grows on."""
    cluster = make_cluster(
        nodes=1, lnm_options={"driver_options": {"latency": {"resize_disk": 0.5}}}
    )
    vm = create(cluster, "twice", disk_gb=2)
    answers: list[object] = []

    def ask() -> None:
        try:
            answers.append(cluster.client().resize_vm(vm, grow={0: 1}))
        except UsherError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [a for a in answers if isinstance(a, UsherError)]
    assert len(refused) == 1 and refused[0].status == 409
    assert "under way" in refused[0].message
    (op,) = [a for a in answers if not isinstance(a, UsherError)]
    assert cluster.run(op).status == OpStatus.SUCCEEDED
    assert cluster.run(cluster.client().resize_vm(vm, grow={0: 1})).status == OpStatus.SUCCEEDED
    assert cluster.client().get_vm(vm).spec.disk_gb == 4


def test_a_node_that_cannot_resize_disks_is_refused_before_anything(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(
        nodes=1, lnm_options={"driver_options": {"capabilities": ["pause", "reboot"]}}
    )
    vm = create(cluster, "rigid", disks=[1])
    refused(409, "cannot resize disks", lambda: cluster.client().resize_vm(vm, grow={1: 1}))
    cluster.run(cluster.client().stop([vm]))
    resize(cluster, vm, memory_mb=300)  # vCPUs and memory need no driver capability
