"""The ``libvirt`` driver's conformance site: hosts ``a`` and ``b`` are two real libvirt
daemons in network namespaces of their own (:func:`libvirt_hosts.libvirt_pair`), sharing one
storage directory; a guest ends behind the driver's back when its QEMU is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from libvirt_hosts import LibvirtPair
from usher.conformance import DriverSite
from usher.vmm.base import Driver
from usher.vmm.libvirt_daemon import LibvirtHost, wait_gone

SEEN_TIMEOUT = 30.0
"""Seconds libvirtd may take to see a killed QEMU's end."""


@dataclass
class LibvirtSite(DriverSite):
    """The ``libvirt`` driver on the daemons of ``pair``."""

    pair: LibvirtPair | None = None
    settle_seconds: float = 1.0
    slow_migration: dict[str, Any] = field(default_factory=lambda: {"migrate_bandwidth_mbps": 1})

    def _host(self, host: str) -> LibvirtHost:
        assert self.pair is not None, "the libvirt site needs its pair of daemons"
        return self.pair.a if host == "a" else self.pair.b

    def _daemon_of(self, driver: Driver) -> LibvirtHost:
        assert self.pair is not None
        uri = driver.options["uri"]
        return next(host for host in self.pair if host.uri == uri)

    def host_options(self, host: str, storage: Path) -> dict[str, Any]:
        daemon = self._host(host)
        return {
            "uri": daemon.uri,
            "migrate_connect": f"qemu+tcp://{{host}}:{daemon.tcp_port}/system",
            "stop_timeout": 10,
            **super().host_options(host, storage),
        }

    def listen_host(self, host: str) -> str:
        return self._host(host).listen_addr

    async def end_guest(self, driver: Driver, vm_id: str, *, attached: bool) -> None:
        _kill_qemu(self._daemon_of(driver), vm_id)

    async def break_migration(self, target: Driver, vm_id: str) -> None:
        _kill_qemu(self._daemon_of(target), vm_id)

    def cleanup(self, state_dir: Path) -> None:
        """Remove every domain the test left on either daemon (they outlive its drivers)."""
        assert self.pair is not None
        for daemon in self.pair:
            conn = daemon.connect()
            try:
                for dom in conn.listAllDomains(0):
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
            finally:
                conn.close()


def _kill_qemu(daemon: LibvirtHost, vm_id: str) -> None:
    """SIGKILL the QEMU of domain ``vm_id`` on ``daemon`` and wait until it is gone and
    libvirtd has seen it end: libvirtd reads its monitor's end a moment after the process is
    gone, and a driver that asked meanwhile found the domain running, then not (a CI run
    under load: "info and list differ")."""
    pidfile = daemon.root / "run" / "libvirt" / "qemu" / f"{vm_id}.pid"
    pid = int(pidfile.read_text().strip())
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid])
    conn = daemon.connect()
    try:
        deadline = time.monotonic() + SEEN_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if not conn.lookupByName(vm_id).isActive():
                    return
            except libvirt.libvirtError:
                return  # a transient domain (an incoming migration's): gone with its QEMU
            time.sleep(0.02)
    finally:
        conn.close()
    raise AssertionError(f"libvirtd still runs {vm_id} {SEEN_TIMEOUT:g} s after its QEMU died")
