"""Test hosts in network namespaces: each held open by a sleeping process, joined to this host
by a veth pair on a bridge. Only ``unshare``/``nsenter`` and plain ``ip`` are used (no ``ip
netns``, which needs to remount / and fails in a chroot)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from harness import wait_for


def run(*cmd: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"


def _teardown(prefix: str) -> None:
    for i in (2, 3):
        subprocess.run(["ip", "link", "del", f"{prefix}-h{i}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{prefix}-br"], capture_output=True)


def plug(pid: int, bridge: str, outside: str, inside: str, address: str) -> None:
    """Join the network namespace of process ``pid`` (once it has one of its own) to
    ``bridge`` by a veth pair (``outside`` on the bridge, ``inside`` in the namespace at
    ``address``/24), with its loopback up."""
    ns = f"/proc/{pid}/ns/net"
    wait_for(
        "the namespace", lambda: os.readlink(ns) != os.readlink("/proc/self/ns/net"), timeout=5
    )
    subprocess.run(["ip", "link", "del", outside], capture_output=True)
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", str(pid))
    run("ip", "link", "set", outside, "master", bridge)
    run("ip", "link", "set", outside, "up")
    inner = ("nsenter", f"--net={ns}", "--", "ip")
    run(*inner, "addr", "add", f"{address}/24", "dev", inside)
    run(*inner, "link", "set", inside, "up")
    run(*inner, "link", "set", "lo", "up")


@contextlib.contextmanager
def two_hosts(prefix: str, subnet: str) -> Iterator[tuple[str, dict[str, str]]]:
    """Bridge ``<prefix>-br`` at ``<subnet>.1`` and two hosts at ``.2`` and ``.3``; yields this
    host's address and ``{namespace file: host address}``. Host ends are ``<prefix>-h2/3``."""
    _teardown(prefix)
    bridge = f"{prefix}-br"
    holders: list[subprocess.Popen[bytes]] = []
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        hosts = {}
        for i in (2, 3):
            holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
            holders.append(holder)
            plug(holder.pid, bridge, f"{prefix}-h{i}", f"{prefix}-n{i}", f"{subnet}.{i}")
            hosts[f"/proc/{holder.pid}/ns/net"] = f"{subnet}.{i}"
        yield f"{subnet}.1", hosts
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        _teardown(prefix)
