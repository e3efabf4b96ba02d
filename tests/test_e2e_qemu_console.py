"""``ush console VM --attach`` on a real QEMU guest (the ``tiny`` image, TCG): a command typed
through the controller runs in the guest's shell and its answer comes back, from a script
(stdin piped) and from the client API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Cluster
from test_e2e_qemu import qemu_cluster, tiny_storage, wait_ready
from usher.model import VMState

__all__ = ["tiny_storage"]  # the image fixture, shared with the QEMU tests

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster(tmp_path: Path, tiny_storage: Path) -> Iterator[Cluster]:
    cluster = qemu_cluster(tmp_path, tiny_storage, nodes=1)
    yield cluster
    client = cluster.client()
    live = [vm.id for vm in cluster.vms() if vm.state in (VMState.RUNNING, VMState.PAUSED)]
    if live:  # guests outlive their LNM by design: end this test's
        client.wait(client.stop(live, kwargs={"hard": True}), timeout=60)
    cluster.stop()


def test_ush_console_attach_types_into_a_real_guest(cluster: Cluster) -> None:
    client = cluster.client()
    cluster.run(client.create_vms(names=["typist"], memory_mb=128), timeout=120)
    wait_ready(client, "typist")

    typed = "echo usher-$((6*7))-answer\nhostname\n"
    result = cluster.ush("console", "typist", "--attach", "--linger", "3", input=typed)
    assert result.returncode == 0, result.stderr
    assert "usher-42-answer" in result.stdout, result.stdout[-2000:]
    assert "\ntypist\n" in result.stdout.replace("\r", "")
    assert "Ctrl-]" not in result.stderr  # no banner without a terminal

    with client.attach_console("typist") as console:
        console.send(b"echo usher-$((7*6))-again\n")
        began, seen = time.monotonic(), ""
        while "usher-42-again" not in seen and time.monotonic() - began < 20:
            seen += console.receive(timeout=1) or ""
        print(f"typed through the controller, answered in {time.monotonic() - began:.3f} s")
        assert "usher-42-again" in seen
    assert "usher-42-again" in client.console("typist").data  # in console.log for good

    result = cluster.ush("console", "nosuchvm", "--attach", input="")
    assert result.returncode == 1 and "unknown VM 'nosuchvm'" in result.stderr
