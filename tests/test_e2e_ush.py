"""``ush`` as a user runs it, against a real controller with three LNMs."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from harness import Cluster


def ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def listing(cluster: Cluster, *args: str) -> list[dict]:
    return json.loads(ok(cluster.ush("list", "-o", "json", *args)))


@pytest.fixture
def c1(cluster: Cluster) -> Cluster:
    ok(cluster.ush("start", "-n", "20", "--cluster", "c1"))
    return cluster


def test_start_20_and_list_json(c1: Cluster) -> None:
    vms = listing(c1)
    assert len(vms) == 20
    for vm in vms:
        assert {"id", "name", "cluster", "node", "state"} <= set(vm)
    assert {vm["state"] for vm in vms} == {"running"}
    assert {vm["cluster"] for vm in vms} == {"c1"}
    assert set(Counter(vm["node"] for vm in vms)) == {"node-1", "node-2", "node-3"}


def test_actions_through_ush(c1: Cluster) -> None:
    ok(c1.ush("pause", "c1-1", "c1-2"))
    assert {v["name"]: v["state"] for v in listing(c1, "--state", "paused")} == {
        "c1-1": "paused",
        "c1-2": "paused",
    }
    ok(c1.ush("resume", "c1-1", "c1-2"))
    ok(c1.ush("reboot", "c1-3"))
    ok(c1.ush("cycle", "c1-4"))
    shown = json.loads(ok(c1.ush("show", "c1-5", "-o", "json")))
    target = next(n for n in ("node-1", "node-2", "node-3") if n != shown["node"])
    ok(c1.ush("migrate", "c1-5", "--to", target))
    assert json.loads(ok(c1.ush("show", "c1-5", "-o", "json")))["node"] == target
    ok(c1.ush("stop", "--cluster", "c1"))
    assert {v["state"] for v in listing(c1)} == {"stopped"}
    ok(c1.ush("start", "c1-1"))
    assert {v["name"] for v in listing(c1, "--state", "running")} == {"c1-1"}
    ok(c1.ush("destroy", "--cluster", "c1"))
    assert listing(c1) == []


def test_no_wait_returns_the_operation(c1: Cluster) -> None:
    out = ok(c1.ush("stop", "c1-1", "--no-wait", "-o", "json"))
    op = json.loads(out)
    assert op["kind"] == "stop" and op["id"].startswith("op-")
    done = json.loads(ok(c1.ush("wait", op["id"], "-o", "json")))
    assert done["status"] == "succeeded"
    assert json.loads(ok(c1.ush("op", op["id"], "-o", "json")))["status"] == "succeeded"
    ops = json.loads(ok(c1.ush("ops", "-o", "json")))
    assert op["id"] in [o["id"] for o in ops]


def test_nodes_drain_events(c1: Cluster) -> None:
    nodes = json.loads(ok(c1.ush("nodes", "-o", "json")))
    assert sorted(n["name"] for n in nodes) == ["node-1", "node-2", "node-3"]
    assert all(n["connected"] and n["state"] == "up" for n in nodes)
    ok(c1.ush("drain", "node-1"))
    assert json.loads(ok(c1.ush("node", "node-1", "-o", "json")))["state"] == "draining"
    ok(c1.ush("start", "-n", "3", "--cluster", "c2"))
    assert "node-1" not in {v["node"] for v in listing(c1, "--cluster", "c2")}
    ok(c1.ush("undrain", "node-1"))
    events = json.loads(ok(c1.ush("events", "--name", "register", "-o", "json")))
    assert len(events) == 23
    table = ok(c1.ush("list"))
    assert "c1-1" in table and "running" in table


def test_errors_are_messages_not_tracebacks(c1: Cluster) -> None:
    result = c1.ush("pause", "nope")
    assert result.returncode == 1
    assert "unknown VM(s): nope" in result.stderr and "Traceback" not in result.stderr
    result = c1.ush("resume", "c1-1", "--strict")
    assert result.returncode == 1 and "c1-1 is running already" in result.stderr
    result = c1.ush("--token", "wrong", "list")
    assert result.returncode == 1 and "token" in result.stderr


def test_images_and_console(c1: Cluster, tmp_path) -> None:
    import subprocess

    images = json.loads(ok(c1.ush("images", "-o", "json")))
    assert [i["name"] for i in images] == ["tiny"]
    disk = tmp_path / "mine.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    ok(c1.ush("image", "import", str(disk), "--name", "mine", "--description", "my disk"))
    assert json.loads(ok(c1.ush("image", "show", "mine", "-o", "json")))["kind"] == "disk"
    not_qcow2 = tmp_path / "junk.img"
    not_qcow2.write_bytes(b"\0" * 4096)  # a raw disk, which an import said to be qcow2 refuses
    result = c1.ush("image", "import", str(not_qcow2), "--name", "junk", "--format", "qcow2")
    assert result.returncode == 1 and "is a raw disk, not qcow2" in result.stderr
    ok(c1.ush("start", "--names", "m1", "--image", "mine"))
    assert json.loads(ok(c1.ush("show", "m1", "-o", "json")))["spec"]["image"] == "mine"
    result = c1.ush("image", "rm", "mine")
    assert result.returncode == 1 and "used by 1 VM" in result.stderr
    result = c1.ush("start", "--names", "x1", "--image", "nosuch")
    assert result.returncode == 1 and "unknown image 'nosuch'" in result.stderr
    console = ok(c1.ush("console", "m1"))
    assert console  # the fake driver's console says something
    ok(c1.ush("destroy", "m1"))
    ok(c1.ush("image", "rm", "mine"))
    assert [i["name"] for i in json.loads(ok(c1.ush("images", "-o", "json")))] == ["tiny"]
