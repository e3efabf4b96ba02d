"""The ``debian`` image (``usher image build debian``) booted by plain QEMU (TCG here) with a
NoCloud seed from :func:`usher.images.nocloud.build_seed`: SSH with the seed's key, sudo as
granted, the seed's host name and network, the root grown to the overlay's size, a login on
the serial console, no SSH host keys in the image, and the power button.

Two guests boot at once from one image: ``dhcp`` (no network-config: DHCP on the first NIC;
its user may sudo) and ``static`` (a network-config v2 with a fixed address; no sudo).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_guest_config import keypair
from usher.cli.image_cmd import image as image_cli
from usher.images.catalog import image_path, read_manifest
from usher.images.debian import NAME, build_debian, host_sources
from usher.images.nocloud import build_seed
from usher.model import Image
from usher.vmm.qemu_accel import DEFAULT_BINARY, detect_accel
from usher.vmm.qemu_seed import free_port

pytestmark = pytest.mark.timeout(900)

SSH_READY = 300.0
"""Seconds a guest may take under TCG from QEMU's start to answering SSH (about 65 s here
for one guest alone, with two vCPUs; the two guests of this module boot at once)."""
POWER_OFF = 60.0
OVERLAY = 4 << 30
USER = "tester"
MAC = "52:54:00:12:34:56"
STATIC_ADDRESS = "10.0.2.50"
SSH_OPTIONS = (
    *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
    *("-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"),
)


@dataclass
class PlainGuest:
    """A QEMU process booting the debian image, reached by SSH on a forwarded port."""

    hostname: str
    directory: Path
    process: subprocess.Popen[bytes]
    port: int
    started: float
    ssh_ready: float | None = None

    @property
    def console(self) -> str:
        return (self.directory / "console.log").read_text(errors="replace")

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        key = str(self.directory / USER)
        argv = ["ssh", "-i", key, "-p", str(self.port), *SSH_OPTIONS, f"{USER}@127.0.0.1"]
        return subprocess.run(
            [*argv, command], capture_output=True, text=True, timeout=timeout, check=False
        )

    def wait_ssh(self) -> float:
        """Seconds from QEMU's start until the guest ran a command over SSH."""
        if self.ssh_ready is None:
            last = None
            while time.monotonic() - self.started < SSH_READY:
                assert self.process.poll() is None, f"QEMU exited:\n{self.console[-3000:]}"
                last = self.ssh("true")
                if last.returncode == 0:
                    self.ssh_ready = time.monotonic() - self.started
                    break
                time.sleep(1)
            else:
                raise AssertionError(
                    f"{self.hostname}: no SSH in {SSH_READY} s ({last and last.stderr})\n"
                    f"{self.console[-3000:]}"
                )
        return self.ssh_ready

    def run(self, command: str) -> str:
        self.wait_ssh()
        done = self.ssh(command)
        assert done.returncode == 0, f"{command}: {done.stderr}"
        return done.stdout

    def qmp(self, command: str, **arguments: object) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.directory / "qmp.sock"))
            stream = sock.makefile("rw")
            stream.readline()  # the greeting
            for name, args in (("qmp_capabilities", {}), (command, arguments)):
                stream.write(json.dumps({"execute": name, "arguments": args}) + "\n")
                stream.flush()
                while "return" not in (answer := json.loads(stream.readline())):
                    assert "error" not in answer, answer


def user_data(public_key: str, sudo: bool) -> str:
    user = {"name": USER, "shell": "/bin/bash", "ssh_authorized_keys": [public_key]}
    if sudo:
        user["sudo"] = "ALL=(ALL) NOPASSWD:ALL"
    return "#cloud-config\n" + json.dumps({"users": [user]})


def boot(storage: Path, image: Image, directory: Path, *, sudo: bool, static: bool) -> PlainGuest:
    """Start QEMU on a 4 GiB overlay of the image's disk with a seed for ``directory.name``."""
    hostname = f"deb-{directory.name}"
    public_key = keypair(directory, USER)
    network = None
    if static:
        network = {
            "version": 2,
            "ethernets": {
                "eth0": {
                    "match": {"macaddress": MAC},
                    "set-name": "eth0",
                    "addresses": [f"{STATIC_ADDRESS}/24"],
                    # cloud-init 22.4 (Debian 12) takes no "to": "default"
                    "routes": [{"to": "0.0.0.0/0", "via": "10.0.2.2"}],
                    "nameservers": {"addresses": ["10.0.2.3"]},
                }
            },
        }
    build_seed(
        directory / "seed.iso",
        meta_data={"instance-id": f"i-{directory.name}", "local-hostname": hostname},
        user_data=user_data(public_key, sudo),
        network_config=network,
    )
    disk = directory / "disk.qcow2"
    base = str(image_path(storage, image, "disk"))
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", str(disk),
         str(OVERLAY)],
        check=True,
    )  # fmt: skip
    port = free_port("127.0.0.1")
    guest_address = STATIC_ADDRESS if static else ""
    argv = [
        DEFAULT_BINARY,
        *("-accel", detect_accel().accel, "-machine", "pc", "-m", "1024", "-smp", "1"),
        *("-nodefaults", "-no-user-config", "-display", "none"),
        *("-serial", f"file:{directory / 'console.log'}"),
        *("-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off"),
        *("-kernel", str(image_path(storage, image, "kernel"))),
        *("-initrd", str(image_path(storage, image, "initrd"))),
        *("-append", image.cmdline or ""),
        *("-drive", f"file={disk},format=qcow2,if=none,id=disk0"),
        *("-device", "virtio-blk-pci,drive=disk0"),
        *("-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-{guest_address}:22"),
        *("-device", f"virtio-net-pci,netdev=net0,mac={MAC}"),
        *("-drive", f"file={directory / 'seed.iso'},format=raw,if=none,id=seed0,media=cdrom"),
        *("-device", "ide-cd,drive=seed0"),
    ]
    log = (directory / "qemu.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return PlainGuest(hostname, directory, process, port, time.monotonic())


@pytest.fixture(scope="module")
def guests(
    debian_image: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, PlainGuest]]:
    image = read_manifest(debian_image, NAME)
    assert image is not None and image.cloud_init
    started: dict[str, PlainGuest] = {}
    try:
        for name, sudo, static in (("dhcp", True, False), ("static", False, True)):
            directory = tmp_path_factory.mktemp(name, numbered=False)
            started[name] = boot(debian_image, image, directory, sudo=sudo, static=static)
        yield started
    finally:
        for guest in started.values():
            guest.process.kill()
            guest.process.wait()


def test_ssh_answers_with_the_seeds_key_host_name_and_sudo(guests: dict[str, PlainGuest]) -> None:
    guest = guests["dhcp"]
    assert guest.run("uname -a").startswith(f"Linux {guest.hostname} ")
    assert guest.run("hostname").strip() == guest.hostname
    assert guest.run("sudo -n id -u").strip() == "0"
    # the static guest's user was granted no sudo
    denied = guests["static"].ssh("sudo -n true")
    assert guests["static"].wait_ssh() and denied.returncode != 0


def test_the_root_file_system_grows_to_the_overlays_size(guests: dict[str, PlainGuest]) -> None:
    size = int(guests["dhcp"].run("df -B1 --output=size / | tail -1"))
    assert 0.95 * OVERLAY < size <= OVERLAY
    assert guests["dhcp"].run("findmnt -no SOURCE /").strip() == "/dev/vda"


def test_dhcp_without_network_config_and_the_static_address_with_one(
    guests: dict[str, PlainGuest],
) -> None:
    dhcp = guests["dhcp"].run("ip -4 -o addr show dev eth0")
    assert " 10.0.2.15/24 " in dhcp and "dynamic" in dhcp
    static = guests["static"].run("ip -4 -o addr show dev eth0")
    assert f" {STATIC_ADDRESS}/24 " in static and "dynamic" not in static
    assert "default via 10.0.2.2" in guests["static"].run("ip route")
    assert guests["static"].run("hostname").strip() == guests["static"].hostname


def test_each_guest_makes_its_own_host_keys(guests: dict[str, PlainGuest]) -> None:
    fingerprint = "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
    assert guests["dhcp"].run(fingerprint) != guests["static"].run(fingerprint)


def test_the_image_holds_no_ssh_host_keys(debian_image: Path, tmp_path: Path) -> None:
    image = read_manifest(debian_image, NAME)
    assert image is not None
    raw = tmp_path / "root.raw"
    disk = str(image_path(debian_image, image, "disk"))
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", disk, str(raw)], check=True)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /etc/ssh", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    assert "sshd_config" in listing
    assert "ssh_host_" not in listing


def test_the_serial_console_offers_a_login(guests: dict[str, PlainGuest]) -> None:
    guest = guests["dhcp"]
    guest.wait_ssh()
    deadline = time.monotonic() + 60
    while f"{guest.hostname} login:" not in guest.console:
        assert time.monotonic() < deadline, guest.console[-2000:]
        time.sleep(1)
    assert "ttyS0" in guest.run("systemctl list-units --no-legend 'serial-getty@*'")


def test_the_root_grows_at_once_when_its_disk_grows_while_running(
    guests: dict[str, PlainGuest],
) -> None:
    guest = guests["static"]
    guest.wait_ssh()
    guest.qmp("block_resize", device="disk0", size=OVERLAY + (1 << 30))
    deadline = time.monotonic() + 60
    while (size := int(guest.run("df -B1 --output=size / | tail -1"))) < OVERLAY + (1 << 29):
        assert time.monotonic() < deadline, f"the root stayed at {size} bytes"
        time.sleep(2)
    assert size <= OVERLAY + (1 << 30)


def test_the_power_button_powers_the_guest_off(guests: dict[str, PlainGuest]) -> None:
    for guest in guests.values():
        guest.wait_ssh()
        guest.qmp("system_powerdown")
    for guest in guests.values():
        assert guest.process.wait(timeout=POWER_OFF) == 0
        assert "reboot: Power down" in guest.console


def test_a_second_build_returns_the_image_unless_forced(debian_image: Path) -> None:
    existing = read_manifest(debian_image, NAME)
    began = time.monotonic()
    assert build_debian(debian_image) == existing
    assert time.monotonic() - began < 1
    result = CliRunner().invoke(image_cli, ["build", "debian", "--storage-dir", str(debian_image)])
    assert result.exit_code == 0, result.output
    assert "image debian exists" in result.output and "--force rebuilds it" in result.output


def test_the_build_downloads_only_from_the_hosts_sources_for_bookworm(tmp_path: Path) -> None:
    listed = tmp_path / "sources.list.d"
    listed.mkdir()
    (tmp_path / "sources.list").write_text("# deb http://old.example/debian bookworm main\n")
    (listed / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
    )
    (listed / "mirror.list").write_text("deb [arch=amd64] http://mirror.example/d bookworm main\n")
    (listed / "other.list").write_text("deb https://packages.example/apt cloud-sdk-bookworm main\n")
    (listed / "trixie.sources").write_text("Types: deb\nSuites: trixie\n")
    (listed / "old.sources.disabled").write_text("Types: deb\nSuites: bookworm\n")
    found = host_sources("bookworm", tmp_path)
    assert found == [listed / "debian.sources", listed / "mirror.list"]
