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
            ns = f"/proc/{holder.pid}/ns/net"
            wait_for(
                "the namespace",
                lambda ns=ns: os.readlink(ns) != os.readlink("/proc/self/ns/net"),
                timeout=5,
            )
            inside = ("nsenter", f"--net={ns}", "--", "ip")
            host_end, ns_end = f"{prefix}-h{i}", f"{prefix}-n{i}"
            run(
                "ip",
                "link",
                "add",
                host_end,
                "type",
                "veth",
                "peer",
                "name",
                ns_end,
                "netns",
                str(holder.pid),
            )
            run("ip", "link", "set", host_end, "master", bridge)
            run("ip", "link", "set", host_end, "up")
            run(*inside, "addr", "add", f"{subnet}.{i}/24", "dev", ns_end)
            run(*inside, "link", "set", ns_end, "up")
            run(*inside, "link", "set", "lo", "up")
            hosts[ns] = f"{subnet}.{i}"
        yield f"{subnet}.1", hosts
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
        _teardown(prefix)
