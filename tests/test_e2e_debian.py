"""Real Debian guests through Usher (qemu driver, TCG): accounts and keys from the plugins,
``ush ssh``, and a live migration that keeps the guest's seed and logins working."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster
from test_guest_config import keypair
from usher.model import OpStatus, VMState

SSH_READY = 420.0
"""Seconds a Debian guest may take under TCG from its start to answering SSH."""
SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=10", "LogLevel=ERROR")

pytestmark = pytest.mark.timeout(900)
USER_DATA = """#cloud-config
hostname: not-the-site-s-choice
write_files:
  - path: /etc/usher-user-data
    content: "the user's own part ran"
"""
"""A user's own cloud-config: its file is written, its host name loses to the site's."""


@pytest.fixture(scope="module")
def world(debian_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two qemu nodes sharing the storage that holds the Debian image; users alice (who
    makes virtual cluster ``lab``), bob (a member) and carol (not one), each with a key."""
    root = tmp_path_factory.mktemp("debian")
    cluster = Cluster(root, None, storage=debian_image, plugins=["keys", "authz"])
    cluster.start_ctrl()
    for name in ("node-1", "node-2"):
        cluster.start_lnm(name, driver="qemu", vcpus=2, memory_mb=4096, wait=False)
    for name in ("node-1", "node-2"):
        cluster.wait_node(name, connected=True)
    keys = root / "keys"
    keys.mkdir()
    users: dict[str, dict[str, Any]] = {}
    for name in ("alice", "bob", "carol"):
        token = cluster.issue_token(name, ["user"])
        public = keypair(keys, name)
        added = cluster.ush("key", "add", "-", env={"USHER_TOKEN": token}, input=public)
        assert added.returncode == 0, added.stderr
        users[name] = {"token": token, "key": str(keys / name), "client": cluster.client(token)}
    made = cluster.ush("cluster", "create", "lab", env={"USHER_TOKEN": users["alice"]["token"]})
    assert made.returncode == 0, made.stderr
    users["alice"]["client"].request("PUT", "/clusters/lab/members/bob")
    yield {"cluster": cluster, "users": users}
    admin = cluster.client()
    live = [vm.id for vm in cluster.vms() if vm.state in (VMState.RUNNING, VMState.PAUSED)]
    if live:
        admin.wait(admin.stop(live, kwargs={"hard": True}), timeout=60)
    cluster.stop()


def ush_ssh(world: dict[str, Any], who: str, vm: str, *command: str, timeout: float = 60):
    user = world["users"][who]
    options = [arg for option in SSH_OPTIONS for arg in ("--ssh-option", option)]
    return world["cluster"].ush(
        "ssh", vm, "-i", user["key"], *options, "--", *command,
        env={"USHER_TOKEN": user["token"]}, timeout=timeout,
    )  # fmt: skip


def wait_ssh(world: dict[str, Any], who: str, vm: str) -> float:
    """Seconds until ``vm`` answers ``who`` over SSH."""
    began = time.monotonic()
    last = None
    while time.monotonic() - began < SSH_READY:
        last = ush_ssh(world, who, vm, "true")
        if last.returncode == 0:
            return time.monotonic() - began
        assert last.returncode == 255, last.stderr  # ssh's own failure: not up yet
        time.sleep(2)
    raise AssertionError(f"{vm} did not answer SSH in {SSH_READY} s: {last and last.stderr}")


def test_members_log_in_with_their_keys_and_others_cannot(world: dict[str, Any]) -> None:
    cluster: Cluster = world["cluster"]
    alice = world["users"]["alice"]
    created = cluster.ush(
        "create", "--image", "debian", "--cluster", "lab", "--names", "web", "--memory", "512",
        "--disk-size", "4G", "--disk", "1G", "--user-data", "-",
        env={"USHER_TOKEN": alice["token"]}, input=USER_DATA,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    print(f"debian guest: start to SSH in {wait_ssh(world, 'alice', 'web'):.1f} s")

    uname = ush_ssh(world, "alice", "web", "uname", "-a")
    assert uname.returncode == 0, uname.stderr
    assert uname.stdout.startswith("Linux web ") and "amd64" in uname.stdout  # the site's name
    mine = ush_ssh(world, "alice", "web", "cat", "/etc/usher-user-data")
    assert mine.stdout.strip() == "the user's own part ran", mine.stderr
    assert ush_ssh(world, "alice", "web", "sudo", "-n", "true").returncode == 0
    bob = ush_ssh(world, "bob", "web", "id", "-un")
    assert bob.returncode == 0 and bob.stdout.strip() == "bob", bob.stderr
    assert ush_ssh(world, "bob", "web", "sudo", "-n", "true").returncode != 0  # not the admin

    # carol may not see the VM, and her key opens no account in it
    refused = ush_ssh(world, "carol", "web", "true")
    assert refused.returncode != 0 and "web" in refused.stderr
    access = world["users"]["alice"]["client"].ssh_access("web")
    for login in ("carol", "alice"):
        direct = subprocess.run(
            ["ssh", "-p", str(access.port), "-i", world["users"]["carol"]["key"],
             *(arg for option in SSH_OPTIONS for arg in ("-o", option)),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             f"{login}@{access.host}", "true"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert direct.returncode == 255 and "Permission denied" in direct.stderr


def test_typing_into_the_attached_console_logs_in(world: dict[str, Any]) -> None:
    """The guest's serial getty answers what is typed through ``ush console --attach``: a
    user name typed at its login prompt is echoed and answered with the password prompt."""
    cluster: Cluster = world["cluster"]
    typed = cluster.ush(
        "console", "web", "--attach", "--linger", "8",
        env={"USHER_TOKEN": world["users"]["alice"]["token"]},
        input="\nalice\n", timeout=120,
    )  # fmt: skip
    assert typed.returncode == 0, typed.stderr
    assert "web login:" in typed.stdout
    assert "web login: alice" in typed.stdout and "Password:" in typed.stdout
    denied = cluster.ush(
        "console", "web", "--attach", env={"USHER_TOKEN": world["users"]["carol"]["token"]},
        input="\n",
    )  # fmt: skip
    assert denied.returncode != 0 and "web" in denied.stderr


def sizes(world: dict[str, Any], vm: str) -> dict[str, int]:
    """The guest's own view: its disks' sizes and its root file system's, in bytes."""
    lsblk = ush_ssh(world, "alice", vm, "lsblk", "-bdno", "NAME,SIZE", "/dev/vda", "/dev/vdb")
    assert lsblk.returncode == 0, lsblk.stderr
    found = {name: int(size) for name, size in (line.split() for line in lsblk.stdout.splitlines())}
    df = ush_ssh(world, "alice", vm, "df", "-B1", "--output=size", "/")
    found["root_fs"] = int(df.stdout.split()[-1])
    return found


def test_disks_have_the_sizes_asked_and_grow_while_running(world: dict[str, Any]) -> None:
    cluster: Cluster = world["cluster"]
    before = sizes(world, "web")
    assert before["vda"] == 4 << 30 and before["vdb"] == 1 << 30
    assert before["root_fs"] > 3.5 * (1 << 30)  # the root grew to the disk on first boot
    grown = cluster.ush(
        "resize", "web", "--disk", "+1G", "--disk", "1:+1G",
        env={"USHER_TOKEN": world["users"]["alice"]["token"]},
    )  # fmt: skip
    assert grown.returncode == 0, grown.stderr
    after = sizes(world, "web")
    assert after["vda"] == 5 << 30 and after["vdb"] == 2 << 30


def test_a_migrated_guest_keeps_its_seed_and_logins(world: dict[str, Any]) -> None:
    cluster: Cluster = world["cluster"]
    alice = world["users"]["alice"]["client"]
    vm = alice.get_vm("web")
    assert ush_ssh(world, "alice", "web", "touch", "/home/alice/before").returncode == 0
    mark = "usher-data-disk-mark"
    write = ush_ssh(world, "alice", "web", f"echo {mark} | sudo dd of=/dev/vdb oflag=direct,sync")
    assert write.returncode == 0, write.stderr
    op = cluster.run(alice.migrate(["web"]), timeout=180)
    assert op.status == OpStatus.SUCCEEDED, op.result
    moved = alice.get_vm("web")
    assert moved.node != vm.node and moved.state == VMState.RUNNING
    wait_ssh(world, "alice", "web")  # the new node forwards a port of its own
    after = ush_ssh(world, "alice", "web", "ls", "/home/alice/before", "/dev/sr0")
    assert after.returncode == 0, after.stderr
    label = ush_ssh(world, "alice", "web", "lsblk", "-no", "LABEL", "/dev/sr0")
    assert label.stdout.strip() == "cidata"
    data = ush_ssh(world, "alice", "web", "sudo", "head", "-c", "64", "/dev/vdb")
    assert data.returncode == 0 and mark in data.stdout
    assert sizes(world, "web")["vdb"] == 2 << 30


def test_snapshot_revert_and_clone_keep_the_guests_files(world: dict[str, Any]) -> None:
    """A file written, snapshotted (the guest running), then changed: the clone of that
    snapshot and the VM reverted to it both boot with the old content."""
    cluster: Cluster = world["cluster"]
    as_alice = {"USHER_TOKEN": world["users"]["alice"]["token"]}

    def write(text: str) -> None:
        done = ush_ssh(world, "alice", "web", f"echo {text} > /home/alice/file && sync")
        assert done.returncode == 0, done.stderr

    def ush(*args: str) -> None:
        done = cluster.ush(*args, env=as_alice, timeout=300)
        assert done.returncode == 0, done.stderr

    write("before-snapshot")
    ush("snapshot", "create", "web", "s1")
    write("after-snapshot")
    ush("clone", "web", "--snapshot", "s1", "--name", "web-copy")
    ush("stop", "web")
    ush("snapshot", "revert", "web", "s1")
    ush("start", "web")
    for vm in ("web", "web-copy"):
        wait_ssh(world, "alice", vm)
        read = ush_ssh(world, "alice", vm, "cat", "/home/alice/file")
        assert read.stdout.strip() == "before-snapshot", (vm, read.stdout, read.stderr)
    host = ush_ssh(world, "alice", "web-copy", "hostname")
    assert host.stdout.strip() == "web-copy"  # a new instance to cloud-init: its own name
    listed = cluster.ush("snapshot", "list", "web", "-o", "json", env=as_alice)
    assert [s["name"] for s in json.loads(listed.stdout)] == ["s1"]
