"""Faults around real QEMU guests: a guest's QEMU killed from outside, and an LNM killed while
its guests run; then the invariants (at most one live QEMU per VM across all nodes)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster, wait_for
from test_e2e_qemu import _power_off, qemu_cluster, wait_ready
from usher.images.tiny import build_tiny
from usher.model import OpStatus, VMState

from .scenario import kill_lnm, settle_and_check


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = tmp_path_factory.mktemp("qstorage")
    build_tiny(storage)
    return storage


@pytest.fixture
def qcluster(tmp_path: Path, storage: Path) -> Iterator[Cluster]:
    cluster = qemu_cluster(tmp_path, storage)
    yield cluster
    _power_off(cluster)
    cluster.stop()


def test_guest_qemu_killed_then_lnm_killed(qcluster: Cluster) -> None:
    cluster = qcluster
    client = cluster.client()
    op = cluster.run(client.create_vms(count=2, cluster="q", node="node-1"), timeout=120)
    assert op.status == OpStatus.SUCCEEDED, op.error
    victim, other = op.targets
    wait_ready(client, victim)
    os.kill(cluster.guest_pid("node-1", victim), signal.SIGKILL)
    wait_for("error", lambda: client.get_vm(victim).state == VMState.ERROR, timeout=15)
    settle_and_check(cluster, bound=60)
    # the LNM dies while the other guest runs: the guest outlives it, is found again
    kill_lnm(cluster, "node-1")
    assert cluster.guest_pid("node-1", other) is not None
    cluster.start_lnm("node-1", driver="qemu", vcpus=4, memory_mb=4096)
    wait_for("running again", lambda: client.get_vm(other).state == VMState.RUNNING, timeout=30)
    # the crashed one starts again, once
    assert cluster.run(client.start_existing([victim]), timeout=120).status == OpStatus.SUCCEEDED
    vms = settle_and_check(cluster, bound=60)
    assert {vm.state for vm in vms} == {VMState.RUNNING}
