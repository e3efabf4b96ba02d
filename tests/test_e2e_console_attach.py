"""``/v1/vms/{vm}/console/attach`` end to end on fake nodes: typing into a guest's console
through the controller, who may, what is audited, and every way a session ends.

The fake guest's console runs a tiny shell (:mod:`usher.vmm.fake_console`): ``echo WORDS``
answers the words, ``hostname`` the VM's name.
"""

from __future__ import annotations

import base64
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness import Cluster, wait_for
from usher.client.console import AttachedConsole
from usher.model import VM

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def site(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Two fake nodes; node-2's driver has a console but takes no input; authz and audit."""
    cluster = make_cluster(nodes=1, plugins=["authz", "audit"])
    cluster.start_lnm(
        "node-2", driver_options={"capabilities": ["pause", "reboot", "live_migrate", "console"]}
    )
    return cluster


def make_vm(site: Cluster, name: str, node: str = "node-1") -> VM:
    site.run(site.client().create_vms(names=[name], node=node))
    return site.client().get_vm(name)


def read_until(console: AttachedConsole, text: str, timeout: float = 10) -> str:
    """What the console shows until ``text`` is in it."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        left = deadline - time.monotonic()
        piece = console.receive(timeout=max(0.01, left))
        if piece is None or left <= 0:
            raise AssertionError(f"{text!r} did not show (ended: {piece is None}): {seen!r}")
        seen += piece
    return seen


def raw(site: Cluster, vm: str, **kwargs: object) -> ClientConnection:
    url = site.url.replace("http", "ws", 1) + f"/v1/vms/{vm}/console/attach"
    return connect(url, open_timeout=10, **kwargs)  # type: ignore[arg-type]


def closed_with(connection: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            connection.recv(timeout=10)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def test_typing_into_a_console_and_detaching_is_audited(site: Cluster) -> None:
    vm = make_vm(site, "shell-1")
    client = site.client()
    with client.attach_console("shell-1") as console:
        assert "shell-1: running" in read_until(console, "shell-1: running")  # history first
        console.send(b"echo hello from usher\r")
        shown = read_until(console, "hello from usher\r\n# ")
        assert "echo hello from usher\r\n" in shown  # the echo of what was typed, then the answer
        console.send(b"hostname\n")
        read_until(console, "shell-1\r\n# ")
    ended = wait_for("console_detach", lambda: client.events(name="console_detach", vm=vm.id).items)
    data = ended[0].data
    assert ended[0].principal == "admin" and ended[0].node == "node-1"
    assert data["bytes_typed"] == len("echo hello from usher\rhostname\n")
    assert data["code"] == 1000 and data["seconds"] > 0
    started = client.events(name="console_attach", vm=vm.id).items
    assert started[0].data["session"] == data["session"] and not started[0].data["read_only"]
    records = site.http("GET", "/v1/audit", params={"vm": vm.id}).json()["items"]
    record = next(r for r in records if r["kind"] == "console")
    assert record["outcome"] == "succeeded" and record["principal"] == "admin"
    assert record["request"]["bytes_typed"] == data["bytes_typed"]
    assert "hello" not in str(record), "what was typed is never recorded"
    # the read-only console shows what happened too
    assert "hello from usher" in client.console("shell-1").data


def test_who_may_attach(site: Cluster) -> None:
    make_vm(site, "private")
    bob = site.issue_token("bob", ["user"])
    with site.client(bob).attach_console("private") as console:  # not his: unknown to him
        assert console.receive(timeout=10) is None
        assert console.close_code == 4404 and "unknown VM" in console.close_reason
    with site.client("not-a-token").attach_console("private") as console:
        assert console.receive(timeout=10) is None
        assert console.close_code == 4401
    with raw(site, "private") as connection:  # no token at all
        assert closed_with(connection)[0] == 4401
    refused = site.client().events(name="console_refused").items
    assert [e.principal for e in refused] == ["bob"] and refused[0].data["code"] == 4404
    records = site.http("GET", "/v1/audit", params={"user": "bob"}).json()["items"]
    assert [(r["kind"], r["outcome"]) for r in records] == [("console", "refused")]

    # a browser's way: the token as a subprotocol, never echoed back
    token = base64.urlsafe_b64encode(site.token.encode()).decode().rstrip("=")
    protocols = ["usher.console.v1", f"usher.auth.{token}"]
    with raw(site, "private", subprotocols=protocols) as connection:
        assert connection.subprotocol == "usher.console.v1"
        assert "private: running" in connection.recv(timeout=10)


def test_oversized_input_ends_the_session(site: Cluster) -> None:
    make_vm(site, "big")
    headers = {"Authorization": f"Bearer {site.token}"}
    with raw(site, "big", additional_headers=headers) as connection:
        connection.recv(timeout=10)
        connection.send(b"x" * 4097)
        code, reason = closed_with(connection)
    assert code == 1009 and "4096" in reason
    with site.client().attach_console("big") as console:  # the VM's console is none the worse
        console.send(b"echo still here\r")
        read_until(console, "still here\r\n")


def test_a_destroyed_vm_ends_its_sessions(site: Cluster) -> None:
    vm = make_vm(site, "doomed")
    client = site.client()
    consoles = [client.attach_console("doomed") for _ in range(3)]
    for console in consoles:
        read_until(console, "doomed: running")
    site.run(client.destroy([vm.id]))
    for console in consoles:
        while console.receive(timeout=10) not in (None, ""):
            pass
        assert console.close_code == 4404 and console.close_reason == "the VM was destroyed"
        console.close()
    ended = wait_for(
        "three ends", lambda: len(client.events(name="console_detach", vm=vm.id).items) == 3
    )
    assert ended


def test_a_session_follows_its_vm_and_ends_when_its_node_goes(site: Cluster) -> None:
    site.start_lnm("node-3")
    vm = make_vm(site, "mover")
    client = site.client()
    with client.attach_console("mover") as console:
        read_until(console, "mover: running")
        site.run(client.migrate([vm.id], target_node="node-3"))
        console.send(b"echo on node 3\r")
        read_until(console, "on node 3\r\n# ")
        site.kill_lnm("node-3")
        began = time.monotonic()
        while console.receive(timeout=10) not in (None, ""):
            pass
        assert console.close_code == 4503 and "node-3" in console.close_reason
        assert time.monotonic() - began < 8


def test_input_a_vm_cannot_take_is_said_so(site: Cluster) -> None:
    make_vm(site, "readonly", node="node-2")  # its driver takes no input
    with site.client().attach_console("readonly") as console:
        read_until(console, "takes no console input")
        console.send(b"echo ignored\r")
        time.sleep(0.5)
    assert "ignored" not in site.client().console("readonly").data
    stopped = make_vm(site, "resting")
    site.run(site.client().stop([stopped.id]))
    with site.client().attach_console("resting") as console:
        read_until(console, "resting: stopped")
        console.send(b"echo hi\r")
        read_until(console, "[usher: input not delivered:")


def test_many_sessions_share_one_feed(site: Cluster) -> None:
    """Sixteen clients on one VM all see one client's answer, quickly; a seventeenth of the
    same principal is refused (nobody takes every console slot)."""
    make_vm(site, "busy")
    client = site.client()
    consoles = [client.attach_console("busy") for _ in range(16)]
    try:
        for console in consoles:
            read_until(console, "busy: running")
        with client.attach_console("busy") as one_too_many:
            assert one_too_many.receive(timeout=10) is None
            assert one_too_many.close_code == 1013
            assert "16 consoles attached" in one_too_many.close_reason
        started = time.monotonic()
        consoles[0].send(b"echo for everyone\r")
        for console in consoles:
            read_until(console, "for everyone\r\n# ")
        print(f"16 sessions saw the answer within {time.monotonic() - started:.3f} s")
        assert time.monotonic() - started < 5
    finally:
        for console in consoles:
            console.close()


def read_terminal(master: int, text: bytes, timeout: float = 10) -> bytes:
    """What a terminal shows until ``text`` is in it."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"{text!r} did not show: {seen!r}")
        seen += os.read(master, 4096)
    return seen


def test_ush_attach_on_a_terminal(site: Cluster) -> None:
    """On a terminal: raw mode while attached (only the guest echoes), Ctrl-] detaches, and
    the terminal is as it was afterwards."""
    make_vm(site, "tty-1")
    master, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    env = {
        **os.environ,
        "USHER_URL": site.url,
        "USHER_TOKEN": site.token,
        "USHER_HOME": str(site.root / "home"),
    }
    ush = subprocess.Popen(
        [sys.executable, "-m", "usher.cli.ush", "console", "tty-1", "--attach"],
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        read_terminal(master, b"tty-1: running")
        os.write(master, b"echo over a tty\r")
        shown = read_terminal(master, b"over a tty\r\n# ")
        assert shown.count(b"echo over a tty") == 1, "the terminal echoed too: not raw"
        os.write(master, b"\x1d")
        assert ush.wait(timeout=15) == 0
        assert termios.tcgetattr(terminal) == before
    finally:
        ush.kill()
        _, stderr = ush.communicate()
        os.close(master)
        os.close(terminal)
    assert b"Ctrl-] detaches" in stderr and b"detached" in stderr


def test_a_session_ends_when_its_right_to_attach_does(site: Cluster) -> None:
    """Asked again while it lasts: a member taken off the VM's cluster is cut off (as one
    who may not see it, 4404), and so is a session whose token was revoked (4401)."""
    alice = site.client(site.issue_token("alice", ["user"]))
    site.run(alice.create_vms(names=["team-vm"], cluster="team", node="node-1"))
    alice.request("PUT", "/clusters/team/members/bob")
    bob = site.client(site.issue_token("bob", ["user"]))
    with bob.attach_console("team-vm") as console:
        read_until(console, "team-vm: running")
        alice.request("DELETE", "/clusters/team/members/bob")
        deadline = time.monotonic() + 20
        while console.receive(timeout=1) is not None and time.monotonic() < deadline:
            pass
        assert console.close_code == 4404 and "no longer allowed" in console.close_reason
    carol_token = site.issue_token("carol", ["admin"])
    carol = site.client(carol_token)
    with carol.attach_console("team-vm") as console:
        read_until(console, "team-vm: running")
        carol.request("POST", "/logout")  # revokes the token the session was opened with
        deadline = time.monotonic() + 20
        while console.receive(timeout=1) is not None and time.monotonic() < deadline:
            pass
        assert console.close_code == 4401 and "no longer allowed" in console.close_reason
