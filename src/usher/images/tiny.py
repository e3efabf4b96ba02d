"""``usher image build tiny``: the standard small test guest, from two Debian packages.

The image boots the Debian cloud kernel (``linux-image-cloud-amd64``) straight into an
initramfs holding ``busybox-static``, a few kernel modules and a shell ``/init``. On the serial
console the guest prints::

    USHER-READY <name>        once, when init is up (name from ``usher.name=`` on the cmdline)
    usher-heartbeat <N>       every second, N = 1, 2, 3, … from each boot
    USHER-IP <address>        when DHCP on eth0 gets a lease
    USHER-POWEROFF            when the ACPI power button is pressed, just before powering off

A shell reads the serial console (respawned when it exits), so what is typed into it
(``ush console VM --attach``) runs: ``echo hi`` answers ``hi``, between heartbeats.

The power button (QEMU ``system_powerdown``) powers the guest off at once through busybox
``acpid``. A blank 64 MiB qcow2 base disk comes with the image, so every VM gets a real
copy-on-write overlay; the guest does not use it.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from usher.images.catalog import (
    DISK,
    ImageError,
    StrPath,
    publish_kernel_image,
    qemu_img,
    read_manifest,
    staging_dir,
)
from usher.images.cpio import CpioWriter
from usher.images.debs import DebCache, extract
from usher.images.kmod import ModuleTree
from usher.model import Image

NAME = "tiny"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
CMDLINE = "console=ttyS0 panic=-1 quiet"
DISK_SIZE = "64M"
DEFAULT_WORK_DIR = Path.home() / ".cache" / "usher" / "debs"

MODULES = ["virtio_pci", "virtio_blk", "virtio_net", "af_packet", "button", "evdev"]
"""Drivers the init loads, with their dependencies, where the kernel has them as modules:
virtio PCI transport, disk and NIC; packet sockets for DHCP; the ACPI power button and the
event device ``acpid`` reads it from."""

INIT = """\
#!/bin/sh
# PID 1 of Usher's tiny guest (usher image build tiny).
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in @MODULES@; do
    insmod "/lib/modules/$module.ko" || echo "usher: cannot load $module"
done
name=usher
for arg in $(cat /proc/cmdline); do
    case "$arg" in usher.name=*) name="${arg#usher.name=}" ;; esac
done
hostname "$name"
ip link set lo up
acpid -c /etc/acpi -l /tmp/acpid.log
for _ in 1 2 3 4 5 6 7 8 9 10; do
    [ -e /sys/class/net/eth0 ] && break
    sleep 0.2
done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    udhcpc -f -i eth0 -s /etc/udhcpc.script &
fi
# a shell for whoever types into the serial console (ush console --attach)
(while :; do setsid cttyhack sh </dev/console >/dev/console 2>&1; sleep 1; done) &
echo "USHER-READY $name"
n=0
while :; do
    n=$((n + 1))
    echo "usher-heartbeat $n"
    sleep 1
done
"""

UDHCPC_SCRIPT = """\
#!/bin/sh
# udhcpc runs this with deconfig|bound|renew|leasefail|nak and the lease in its environment.
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ;;
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        : > /etc/resolv.conf
        for server in $dns; do echo "nameserver $server" >> /etc/resolv.conf; done
        echo "USHER-IP $ip" > /dev/console
        ;;
esac
"""

POWER_BUTTON = """\
#!/bin/sh
# busybox acpid runs this on an ACPI power-button press (QEMU system_powerdown).
echo USHER-POWEROFF > /dev/console
sync
poweroff -f
"""


def build_tiny(
    storage: StrPath,
    *,
    work_dir: StrPath | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Image:
    """Build the ``tiny`` image into ``<storage>/images/tiny/`` and return its manifest.

    Idempotent: an existing ``tiny`` image is returned as it is unless ``force``. Packages are
    cached in ``work_dir`` (default ``~/.cache/usher/debs``). ``progress`` hears each step.
    """
    existing = read_manifest(storage, NAME)
    if existing is not None and not force:
        return existing
    say = progress or (lambda step: None)
    debs = DebCache(Path(work_dir) if work_dir else DEFAULT_WORK_DIR, say)
    kernel_package = debs.dependency(KERNEL_PACKAGE, "linux-image-")
    kernel_deb, busybox_deb = debs.fetch(kernel_package, BUSYBOX_PACKAGE)
    with tempfile.TemporaryDirectory(prefix="usher-tiny-") as tmp:
        root = Path(tmp)
        say(f"unpacking {kernel_deb.name} and {busybox_deb.name}")
        extract(kernel_deb, root / "kernel")
        extract(busybox_deb, root / "busybox")
        vmlinuz = _only(root / "kernel" / "boot", "vmlinuz-*")
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = ModuleTree(_in_package(root / "kernel", f"lib/modules/{version}"))
        loaded = modules.load_order(MODULES)
        say(f"building the initramfs ({len(loaded)} kernel modules)")
        busybox = _in_package(root / "busybox", "bin/busybox")
        initrd = initramfs(busybox.read_bytes(), loaded)
        staged = staging_dir(storage, NAME, "build")
        try:
            shutil.copyfile(vmlinuz, staged / "vmlinuz")
            (staged / "initrd.gz").write_bytes(initrd)
            say(f"creating the {DISK_SIZE} base disk")
            qemu_img("create", "-q", "-f", "qcow2", str(staged / DISK), DISK_SIZE)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    published = publish_kernel_image(
        storage,
        staged,
        NAME,
        {"kernel": "vmlinuz", "initrd": "initrd.gz", "disk": DISK},
        cmdline=CMDLINE,
        description=f"busybox test guest, Linux {version}",
    )
    say(f"image {NAME} is ready in {staged.parent / NAME}")
    return published


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """The gzip-compressed newc cpio archive the tiny guest boots into."""
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    for directory in ("proc", "sys", "dev", "tmp", "run", "root", "sbin", "usr/bin", "usr/sbin"):
        cpio.directory(directory)
    cpio.char_device("dev/console", 5, 1)
    cpio.file("bin/busybox", busybox, 0o755)
    cpio.symlink("bin/sh", "busybox")
    names = " ".join(name for name, _ in modules)
    cpio.file("init", INIT.replace("@MODULES@", names).encode(), 0o755)
    cpio.file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWER_BUTTON.encode(), 0o755)
    for name, elf in modules:
        cpio.file(f"lib/modules/{name}.ko", elf)
    cpio.close()
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise ImageError(f"expected one {pattern} in {directory}, found {len(found)}")
    return found[0]


def _in_package(root: Path, relative: str) -> Path:
    """``root/relative`` or, in merged-/usr packages, ``root/usr/relative``."""
    for candidate in (root / relative, root / "usr" / relative):
        if candidate.exists():
            return candidate
    raise ImageError(f"the package has no {relative}")
