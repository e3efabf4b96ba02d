"""Snapshots, clones and images from VMs end to end: ``ush`` against a controller and qemu
LNMs running real tiny guests (TCG).

The tiny guest does not mount its disk: the test writes to it from the host while the VM is
stopped (``qemu-io``) and reads it back after a revert, in a clone and in a VM made from the
template, so an operation that did nothing fails it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster
from test_e2e_qemu import _power_off, qemu_cluster, tiny_storage, wait_ready
from test_qemu_snapshots import backing_of, qemu_io
from usher.images import catalog
from usher.model import VMState

__all__ = ["tiny_storage"]  # the fixture
pytestmark = pytest.mark.timeout(400)  # four tiny guests boot under TCG (90 s on a busy host)


@pytest.fixture
def cluster(tmp_path: Path, tiny_storage: Path) -> Iterator[Cluster]:
    cluster = qemu_cluster(tmp_path, tiny_storage)
    yield cluster
    _power_off(cluster)
    cluster.stop()


def test_snapshot_revert_clone_and_template_of_real_guests(cluster: Cluster) -> None:
    client = cluster.client()

    def ush(*args: str) -> str:
        done = cluster.ush(*args, timeout=180)
        assert done.returncode == 0, f"ush {' '.join(args)}: {done.stderr}"
        return done.stdout

    def disk(name: str) -> Path:
        return catalog.vm_dir(cluster.storage, client.get_vm(name).id) / catalog.DISK

    ush("create", "--names", "qsrc", "--memory", "128")
    wait_ready(client, "qsrc")
    ush("snapshot", "create", "qsrc", "live")  # running: QMP, the guest runs on
    assert client.get_vm("qsrc").state is VMState.RUNNING
    ush("stop", "--force", "qsrc")

    assert qemu_io(disk("qsrc"), "write -P 0xab 0 64k")
    ush("snapshot", "create", "qsrc", "ab")  # stopped: qemu-img
    assert qemu_io(disk("qsrc"), "write -P 0xcd 0 64k")
    ush("snapshot", "revert", "qsrc", "ab")
    assert qemu_io(disk("qsrc"), "read -P 0xab 0 64k")  # the write after it is undone
    listed = json.loads(ush("-o", "json", "snapshot", "list", "qsrc"))
    assert [(s["name"], s["running"]) for s in listed] == [("live", True), ("ab", False)]
    assert listed[1]["size_bytes"] >= 64 * 1024  # it holds what was written
    ush("snapshot", "rm", "qsrc", "live")
    assert [s.name for s in client.snapshots("qsrc")] == ["ab"]

    ush("clone", "qsrc", "--name", "qclone")  # from the stopped VM
    wait_ready(client, "qclone")
    source, clone = client.get_vm("qsrc"), client.get_vm("qclone")
    assert clone.spec.nics[0]["mac"] != source.spec.nics[0]["mac"]
    assert backing_of(disk("qclone")) == backing_of(disk("qsrc"))  # small: the same base
    ush("stop", "--force", "qclone")
    assert qemu_io(disk("qclone"), "read -P 0xab 0 64k")  # the source's data, its own disk
    assert qemu_io(disk("qclone"), "write -P 0x11 0 64k")
    assert qemu_io(disk("qsrc"), "read -P 0xab 0 64k")

    ush("image", "from-vm", "qsrc", "--name", "qtmpl", "--description", "tiny + 0xab")
    image = client.image("qtmpl")
    assert image.kind == "kernel" and set(image.files) == {"kernel", "initrd", "disk"}
    ush("create", "--names", "qfromtmpl", "--image", "qtmpl", "--memory", "128")
    wait_ready(client, "qfromtmpl")
    ush("stop", "--force", "qfromtmpl")
    assert qemu_io(disk("qfromtmpl"), "read -P 0xab 0 64k")  # the template's data

    ush("start", "qsrc")  # a running VM is cloned from one of its snapshots
    wait_ready(client, "qsrc", count=2)
    refused = cluster.ush("clone", "qsrc", "--name", "qclone2")
    assert refused.returncode != 0 and "stop it first" in refused.stderr
    ush("clone", "qsrc", "--name", "qclone2", "--snapshot", "ab")
    wait_ready(client, "qclone2")
    assert client.get_vm("qsrc").state is VMState.RUNNING
