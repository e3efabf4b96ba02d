"""The example out-of-tree driver package, installed and loaded through its entry point by a
real LNM process that joins a real controller."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import example_driver
from harness import Cluster
from usher.client import UsherError
from usher.model import OpKind, OpStatus, VMState


@pytest.fixture(scope="session")
def installed() -> None:
    example_driver.install()


def test_a_node_runs_vms_with_the_example_driver(installed: None, make_cluster) -> None:
    cluster: Cluster = make_cluster(nodes=0)
    cluster.start_lnm("mem-1", driver=example_driver.NAME, vcpus=4, memory_mb=4096)
    node = cluster.node("mem-1")
    assert node.driver == "memory"
    assert sorted(node.capabilities) == ["console", "pause", "reboot"]
    client = cluster.client()
    op = cluster.run(client.create_vms(names=["mem-vm"], vcpus=2, memory_mb=1024))
    assert op.status == OpStatus.SUCCEEDED, op
    vm = client.get_vm("mem-vm")
    assert vm.state is VMState.RUNNING and vm.node == "mem-1"
    with pytest.raises(UsherError) as err:  # it declares no live_migrate
        client.action(OpKind.MIGRATE, ["mem-vm"])
    assert err.value.status == 409 and "cannot live_migrate" in err.value.message
    assert cluster.run(client.action(OpKind.STOP, ["mem-vm"])).status == OpStatus.SUCCEEDED
    assert client.get_vm("mem-vm").state is VMState.STOPPED
    assert cluster.run(client.action(OpKind.START, ["mem-vm"])).status == OpStatus.SUCCEEDED
    assert client.get_vm("mem-vm").state is VMState.RUNNING


def test_an_unknown_driver_is_refused_naming_the_installed_ones(
    installed: None, tmp_path: Path
) -> None:
    token = tmp_path / "join.token"
    token.write_text("unused\n")
    lnm = ["lnm", "--ctrl", "http://127.0.0.1:9", "--name", "nobody", "--driver", "no-such"]
    lnm += ["--state-dir", str(tmp_path), "--join-token-file", str(token)]
    result = subprocess.run(
        [sys.executable, "-m", "usher.cli.usher_cmd", *lnm],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    found = re.search(r"unknown VMM driver 'no-such'; installed drivers: ([\w, -]+)", result.stderr)
    assert found is not None, result.stderr
    assert {"fake", "memory", "qemu"} <= set(found.group(1).split(", "))
