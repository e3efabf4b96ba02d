"""Quotas (per user, per group) and the keyword-argument filter, through a real controller."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from harness import Cluster
from usher.client import Client, UsherError
from usher.model import OpStatus

QUOTAS = {
    "default": {"vms": 3, "memory_mb": 1024},
    "users": {"s2": {"vms": 5}},
    "groups": {"students": {"vms": 4, "vcpus": 6}},
}
KWARGS = {"mode": "refuse", "allow": {"user": ["tag"], "admin": ["*"]}}


@pytest.fixture
def limited(make_cluster) -> Cluster:
    return make_cluster(
        nodes=2,
        plugins=["site_plugins:Students", "quotas", "kwargfil"],
        plugin_tables={"quotas": QUOTAS, "kwargfil": KWARGS},
    )


def as_user(cluster: Cluster, token: str) -> Client:
    return cluster.client(token)


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(UsherError) as err:
        call()
    assert err.value.status == 403
    return err.value.message


def test_user_quota_is_checked_before_anything_starts(limited: Cluster) -> None:
    t1 = as_user(limited, "ush_t1")
    assert limited.run(t1.create_vms(count=2, memory_mb=256)).status == OpStatus.SUCCEEDED
    message = refused(lambda: t1.create_vms(count=2, memory_mb=256))
    assert "quota exceeded: user t1 may have 3 VMs (vms quota)" in message
    assert "holds 2 and asks for 2 more; 1 left" in message
    message = refused(lambda: t1.create_vms(count=1, memory_mb=1024))
    assert "MB of memory (memory_mb quota), holds 512 and asks for 1024 more; 512 left" in message
    assert len(limited.vms(owner="t1")) == 2  # nothing of the refused requests started
    assert limited.run(t1.create_vms(count=1, memory_mb=256)).status == OpStatus.SUCCEEDED


def test_group_quota_is_shared_by_its_members(limited: Cluster) -> None:
    s1, s2 = as_user(limited, "ush_s1"), as_user(limited, "ush_s2")
    assert limited.run(s1.create_vms(count=2, vcpus=2)).status == OpStatus.SUCCEEDED
    message = refused(lambda: s2.create_vms(count=2, vcpus=2))
    assert "group students may have 6 vCPUs (vcpus quota), holds 4 and asks for 4 more" in message
    assert limited.run(s2.create_vms(count=1, vcpus=2)).status == OpStatus.SUCCEEDED
    message = refused(lambda: s2.create_vms(count=1, vcpus=1))
    assert "6 vCPUs (vcpus quota), holds 6 and asks for 1 more; 0 left" in message
    # s2's own VM quota (5) is not what stops it: the group's shared limits are
    assert len(limited.vms(owner="s2")) == 1
    # other users are not counted in the group
    assert limited.run(limited.client().create_vms(count=3)).status == OpStatus.SUCCEEDED


def test_kwargs_filter_refuses_what_a_role_may_not_pass(limited: Cluster) -> None:
    t1 = as_user(limited, "ush_t1")
    op = limited.run(t1.create_vms(count=1, kwargs={"tag": "ok"}))
    assert op.status == OpStatus.SUCCEEDED
    message = refused(lambda: t1.create_vms(count=1, kwargs={"tag": "x", "cpu_pinning": 3}))
    assert "kwargs not allowed for t1 (user): cpu_pinning; allowed: tag" in message
    message = refused(
        lambda: (
            t1.stop(["vm-doesnotmatter"], kwargs={"hard": True})
            if False
            else t1.stop(op.targets, kwargs={"hard": True})
        )
    )
    assert "hard" in message
    # the parameters the core passes for snapshots and resizes are its own, not the user's
    vm = op.targets[0]
    assert limited.run(t1.snapshot_create(vm, "s1")).status == OpStatus.SUCCEEDED
    assert limited.run(t1.resize_vm(vm, grow={0: 1})).status == OpStatus.SUCCEEDED
    message = refused(lambda: t1.snapshot_create(vm, "s2", kwargs={"cpu_pinning": 1}))
    assert "kwargs not allowed for t1 (user): cpu_pinning;" in message
    admin = limited.client()
    assert limited.run(admin.stop(op.targets, kwargs={"hard": True})).status == "succeeded"


def test_kwargs_filter_can_strip_instead(make_cluster) -> None:
    cluster = make_cluster(
        nodes=1,
        plugins=["site_plugins:Students", "kwargfil"],
        plugin_tables={"kwargfil": {**KWARGS, "mode": "strip"}},
    )
    t1 = as_user(cluster, "ush_t1")
    op = cluster.run(t1.create_vms(count=1, kwargs={"tag": "kept", "secret": "dropped"}))
    assert op.status == OpStatus.SUCCEEDED
    assert t1.get_vm(op.targets[0]).spec.kwargs == {"tag": "kept"}


def test_bad_quota_config_stops_the_controller_with_a_message(tmp_path) -> None:
    cluster = Cluster(
        tmp_path, None, plugins=["quotas"], plugin_tables={"quotas": {"default": {"vms": -1}}}
    )
    try:
        with pytest.raises(AssertionError, match="greater than or equal to 0"):
            cluster.start_ctrl()
    finally:
        cluster.stop()
