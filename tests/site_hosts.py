"""Hosts of a site for the deploy test: each a network namespace and a mount namespace of its
own, held open by a sleeping process and joined to the others by a veth pair on a bridge.

A host has its own ``/etc`` (a copy of this machine's, so ``useradd`` and the unit files stay
in it), ``/var/lib``, ``/run``, ``/root`` and ``/opt`` (``/opt/usher`` is this test's
virtualenv, as ``python3 -m venv /opt/usher`` would make it), and a ``systemctl`` that starts
units without systemd (:mod:`systemctl_shim`). The shared storage is one directory
bind-mounted at ``/var/lib/usher/storage`` on every host.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from netns import plug, run
from usher.vmm.libvirt_daemon import _propagation

SHIM = Path(__file__).with_name("systemctl_shim.py")
STORAGE = "/var/lib/usher/storage"


@dataclass
class Host:
    name: str
    address: str
    root: Path
    holder: subprocess.Popen[bytes]

    def enter(self) -> list[str]:
        """The command prefix that runs a command on this host. ``--root``: entering a mount
        namespace moves a process to its real root, which in a chroot is not this one's."""
        target = f"--target={self.holder.pid}"
        return ["nsenter", target, "--net", "--mount", "--root", "--wd", "--"]

    def sh(
        self,
        script: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 90,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with bash (``-euo pipefail``) as root in ``/root`` of this host."""
        environment = {
            "PATH": f"/opt/shim:{os.environ['PATH']}",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        done = subprocess.run(
            [*self.enter(), "bash", "-euo", "pipefail", "-c", f"cd /root\n{script}"],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            logs = self.sh("tail -n 40 /run/usher-units/*.log || true", check=False).stdout
            raise AssertionError(
                f"on {self.name}: {script}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
                f"\nunit logs:\n{logs}"
            )
        return done

    def file(self, path: str) -> Path:
        """Where this host's ``path`` is in the test's own view of the file system."""
        for mount in ("etc", "var/lib", "run", "root", "opt"):
            if path.startswith(f"/{mount}/"):
                return self.root / mount / path.removeprefix(f"/{mount}/")
        raise ValueError(f"{path} is not in a private directory of {self.name}")


PRIVATE = ("var/lib", "run", "root", "opt")
"""The directories each host has of its own (and ``/etc``, a copy)."""


def _usher_below(mount: str) -> set[Path]:
    """The first directories below ``/<mount>`` that hold the Usher under test (the clone, its
    virtualenv, the Python behind it, e.g. /root/project or a pyenv's /root/.pyenv)."""
    top = Path("/", mount)
    here = (Path(sys.prefix), Path(sys.base_prefix), Path(__file__).resolve().parent)
    return {top / p.relative_to(top).parts[0] for p in here if p.is_relative_to(top)}


def _mounts(host: Host, storage: Path) -> None:
    for mount in PRIVATE:
        (host.root / mount).mkdir(parents=True)
    shutil.copytree("/etc", host.root / "etc", symlinks=True)
    (host.root / "var/lib/usher/storage").mkdir(parents=True)
    os.symlink(sys.prefix, host.root / "opt/usher")
    (host.root / "opt/shim").mkdir()
    shim = host.root / "opt/shim/systemctl"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {SHIM} "$@"\n')
    shim.chmod(0o755)
    binds = [(host.root / m, f"/{m}") for m in ("etc", *PRIVATE)]
    binds.append((storage, STORAGE))
    # the Usher under test stays where it is when it is below a private directory
    for mount in PRIVATE:
        for kept in _usher_below(mount):
            inner = host.root / mount / kept.name
            inner.mkdir(exist_ok=True)
            (host.root / mount).chmod(0o711 if mount == "root" else 0o755)
            binds.insert(0, (kept, str(inner)))
    script = "\n".join(f"mount --rbind {source} {target}" for source, target in binds)
    run(*host.enter(), "sh", "-e", "-c", script)


@contextlib.contextmanager
def site_hosts(
    prefix: str, subnet: str, names: list[str], root: Path, storage: Path
) -> Iterator[list[Host]]:
    """Hosts ``names`` at ``<subnet>.2``, ``.3``, … on bridge ``<prefix>-br`` (at ``.1``)."""
    bridge = f"{prefix}-br"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    hosts: list[Host] = []
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{subnet}.1/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        for i, name in enumerate(names, start=2):
            holder = subprocess.Popen(
                ["unshare", "--net", "--mount", f"--propagation={_propagation()}", "sleep", "inf"]
            )
            host = Host(name, f"{subnet}.{i}", root / name, holder)
            hosts.append(host)
            plug(holder.pid, bridge, f"{prefix}-h{i}", f"{prefix}-n{i}", host.address)
            _mounts(host, storage)
            hosts_file = host.root / "etc/hosts"
            hosts_file.write_text(
                "127.0.0.1 localhost\n"
                + "".join(f"{subnet}.{j} {n}\n" for j, n in enumerate(names, start=2))
            )
            (host.root / "etc/hostname").write_text(name + "\n")
        yield hosts
    finally:
        for host in hosts:
            host.holder.kill()
            host.holder.wait()
            subprocess.run(
                ["ip", "link", "del", f"{prefix}-h{hosts.index(host) + 2}"], capture_output=True
            )
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
