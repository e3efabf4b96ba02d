"""One real ``dnsmasq`` per Linux bridge: DHCP with static leases and DNS for the VMs on it.

This is the single-host set-up: dnsmasq runs on the controller's host, on a bridge that the
guests' taps join (the LNMs run on the same host, or the bridge is extended to theirs by the
site, e.g. with a VLAN or a tunnel). The bridge is created with iproute2 if it is missing and
given the gateway address of every range on it; it is left in place when dnsmasq stops, since
guests may still be plugged into it.

Files live in one directory per bridge: ``dnsmasq.conf``, ``dhcp-hosts`` (``mac,ip,name``
lines: the static leases), ``hosts`` (``ip fqdn`` lines: the DNS names), ``leases``, ``pid``
and ``dnsmasq.log``. Both host files are rewritten whole and dnsmasq is sent SIGHUP, which
makes it read them again and forget its cache.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path


@dataclass(frozen=True)
class Lease:
    """A static lease and the DNS name that goes with it."""

    mac: str
    address: str
    hostname: str
    fqdn: str


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def ensure_bridge(bridge: str, gateways: list[IPv4Interface]) -> None:
    """Make ``bridge`` exist, hold every address in ``gateways`` and be up."""
    if not Path(f"/sys/class/net/{bridge}").exists():
        _ip("link", "add", "name", bridge, "type", "bridge")
    held = _ip("-o", "-4", "addr", "show", "dev", bridge).split()
    for gateway in gateways:
        if str(gateway) not in held:
            _ip("addr", "add", str(gateway), "dev", bridge)
    _ip("link", "set", bridge, "up")


def _write(path: Path, text: str) -> None:
    """Replace ``path`` at once, so dnsmasq never reads half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Dnsmasq:
    """The dnsmasq process serving the ranges (``gateways``) of one bridge."""

    def __init__(
        self,
        bridge: str,
        gateways: list[IPv4Interface],
        directory: Path,
        *,
        dns_port: int,
        domain: str,
        lease_seconds: int,
    ) -> None:
        self.bridge = bridge
        self.gateways = gateways
        self.dir = directory
        self.dns_port = dns_port
        self.domain = domain
        self.lease_seconds = lease_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        """The dnsmasq configuration: bound to the bridge alone, answering only from the
        allocations (no /etc/hosts, no upstream servers); it keeps the controller's user, so
        it can read the host files again on SIGHUP wherever the state directory is."""
        lines = [
            f"interface={self.bridge}",
            "bind-interfaces",
            "except-interface=lo",
            f"port={self.dns_port}",
            "no-resolv",
            "no-hosts",
            f"local=/{self.domain}/",
            f"user={pwd.getpwuid(os.getuid()).pw_name}",
            f"group={grp.getgrgid(os.getgid()).gr_name}",
            f"pid-file={self.dir / 'pid'}",
            f"dhcp-leasefile={self.dir / 'leases'}",
            f"dhcp-hostsfile={self.dir / 'dhcp-hosts'}",
            f"addn-hosts={self.dir / 'hosts'}",
            f"log-facility={self.dir / 'dnsmasq.log'}",
            "log-dhcp",
            "dhcp-authoritative",
        ]
        for index, gateway in enumerate(self.gateways):
            net = gateway.network
            lines += [
                f"dhcp-range=set:r{index},{net.network_address},static,{net.netmask},"
                f"{self.lease_seconds}",
                f"dhcp-option=tag:r{index},option:router,{gateway.ip}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Create the bridge if needed, write the files and start dnsmasq."""
        ensure_bridge(self.bridge, self.gateways)
        self.dir.mkdir(parents=True, exist_ok=True)
        _write(self.dir / "dnsmasq.conf", self.config())
        self.write_hosts([])
        log = open(self.dir / "stderr.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            ["dnsmasq", "--keep-in-foreground", f"--conf-file={self.dir / 'dnsmasq.conf'}"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        time.sleep(0.2)
        if self.proc.poll() is not None:
            error = (self.dir / "stderr.log").read_text(errors="replace").strip()
            raise RuntimeError(f"dnsmasq on {self.bridge} exited at once: {error[-500:]}")

    def write_hosts(self, leases: list[Lease]) -> None:
        _write(
            self.dir / "dhcp-hosts", "".join(f"{x.mac},{x.address},{x.hostname}\n" for x in leases)
        )
        _write(self.dir / "hosts", "".join(f"{x.address} {x.fqdn}\n" for x in leases))

    def update(self, leases: list[Lease]) -> None:
        """Serve exactly ``leases`` from now on."""
        self.write_hosts(leases)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
