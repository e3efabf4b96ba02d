"""A guest's QEMU command line, and the NICs and MAC addresses Usher gives it.

A source QEMU and the incoming QEMU of a live migration must have the same devices: both get
their command line from :func:`qemu_argv` with the same arguments (only ``incoming`` and the
host-local tap names differ).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from usher.images import catalog
from usher.model import Image, ImageKind, VMSpec
from usher.vmm.base import DriverError

MAC_PATTERN = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
BRIDGE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
"""Linux interface names: at most 15 characters, no '/', ',' or blanks."""


@dataclass(frozen=True)
class Nic:
    """One virtual NIC: its MAC and its network, ``default``, ``user`` or ``bridge:<name>``."""

    mac: str
    network: str = "default"

    def to_json(self) -> dict[str, str]:
        return {"mac": self.mac, "network": self.network}


def default_mac(vm_id: str, index: int = 0) -> str:
    """A MAC derived from the VM id: stable across boots and nodes, locally administered and
    unicast (first octet ``xxxxxx10``), with 46 bits from a hash so clusters do not collide."""
    digest = hashlib.sha256(f"{vm_id}/{index}".encode()).digest()
    octets = [(digest[0] & 0xFC) | 0x02, *digest[1:6]]
    return ":".join(f"{octet:02x}" for octet in octets)


def nics_of(vm_id: str, specs: list[dict[str, Any]]) -> list[Nic]:
    """The NICs ``spec.nics`` asks for, checked; one default NIC when it asks for none."""
    if not specs:
        return [Nic(default_mac(vm_id))]
    nics = []
    for index, spec in enumerate(specs):
        mac = str(spec.get("mac") or default_mac(vm_id, index)).lower()
        network = str(spec.get("network", "default"))
        if not MAC_PATTERN.match(mac) or int(mac[:2], 16) & 1:
            raise DriverError(f"VM {vm_id}: NIC {index} has an invalid unicast MAC {mac!r}")
        if network not in ("default", "user"):
            kind, _, bridge = network.partition(":")
            if kind != "bridge" or not BRIDGE_PATTERN.match(bridge):
                raise DriverError(
                    f"VM {vm_id}: NIC {index} has network {network!r}; "
                    "use 'default', 'user' or 'bridge:<name>'"
                )
        nics.append(Nic(mac, network))
    return nics


def bridge_of(nic: Nic, default_bridge: str | None) -> str | None:
    """The Linux bridge ``nic`` plugs into on this node, or None for user-mode networking."""
    if nic.network.startswith("bridge:"):
        return nic.network.removeprefix("bridge:")
    if nic.network == "default":
        return default_bridge
    return None


def tap_name(scope: str, vm_id: str, index: int) -> str:
    """A 15-character tap device name, unique per (node ``scope``, VM, NIC): the source and
    the target of a migration on one host must not clash."""
    digest = hashlib.sha256(f"{scope}/{vm_id}".encode()).hexdigest()
    return f"u{digest[:12]}{index:02x}"


def _escaped(value: str) -> str:
    """A value for a QEMU ``key=value,…`` option: commas are doubled."""
    return value.replace(",", ",,")


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot: kernel and initrd paths and the kernel command line."""

    kernel: str
    initrd: str | None
    append: str


def kernel_boot(storage: str, image: Image, name: str) -> KernelBoot | None:
    """How a guest named ``name`` of ``image`` boots: the image's kernel (and initrd) with its
    command line plus ``usher.name=<name>`` (the tiny guest prints it when it is up), or None
    for an image that boots from its disk. Raises :class:`DriverError` for a lost file."""
    if image.kind is not ImageKind.KERNEL:
        return None
    try:
        kernel = catalog.image_path(storage, image, "kernel")
        initrd = catalog.image_path(storage, image, "initrd") if "initrd" in image.files else None
    except catalog.ImageError as exc:
        raise DriverError(f"cannot boot VM {name}: {exc}") from exc
    return KernelBoot(
        kernel=str(kernel),
        initrd=str(initrd) if initrd else None,
        append=f"{image.cmdline or ''} usher.name={name}".strip(),
    )


def qemu_argv(
    *,
    binary: str,
    accel: str,
    name: str,
    spec: VMSpec,
    disk: str,
    console: str,
    console_socket: str,
    qmp_socket: str,
    log: str,
    nics: list[tuple[Nic, str | None]],
    kernel: KernelBoot | None,
    incoming: bool,
    seed: str | None = None,
    ssh_forward: str | None = None,
    data_disks: tuple[str, ...] = (),
) -> list[str]:
    """The command line of a guest; ``nics`` pairs each NIC with its tap device (None: user-mode
    networking). ``qmp_socket``, ``console_socket`` and ``log`` (where the daemon's stderr goes)
    may be relative to QEMU's working directory. The serial console is a Unix socket server
    (``console_socket``, where the driver types into it; see :mod:`usher.vmm.qemu_console`)
    that appends all the guest's output to the file ``console`` whether or not a client is
    connected (a socket chardev drops output while none is, so the guest never waits).
    ``seed`` is a cloud-init NoCloud seed, attached read-only as a CD-ROM; ``ssh_forward``
    (``host:port``) is forwarded to port 22 of the first user-mode NIC. ``data_disks`` are
    qcow2 files attached after the root disk ``disk``, in order, as virtio-blk devices whose
    drives are ``data1``, ``data2``, … (``disk0`` is the root disk's; the guest sees ``vda``,
    ``vdb``, …)."""
    argv = [
        binary,
        *("-name", _escaped(name)),
        *("-accel", accel, "-machine", "pc"),
        *("-m", str(spec.memory_mb), "-smp", str(spec.vcpus)),
        *("-nodefaults", "-no-user-config", "-display", "none"),
        *(
            "-chardev",
            f"socket,id=serial0,path={_escaped(console_socket)},server=on,wait=off,"
            f"logfile={_escaped(console)},logappend=on",
        ),
        *("-serial", "chardev:serial0"),
        *("-qmp", f"unix:{_escaped(qmp_socket)},server=on,wait=off"),
        *("-D", log),
        # the image lock is the disk lease: a second QEMU cannot open a disk one holds (on
        # this host, or on another host of an NFSv4 storage); kept on, never "auto"
        *("-drive", f"file={_escaped(disk)},format=qcow2,if=none,id=disk0,file.locking=on"),
        *("-device", "virtio-blk-pci,drive=disk0"),
    ]
    for index, data in enumerate(data_disks, start=1):
        argv += [
            "-drive",
            f"file={_escaped(data)},format=qcow2,if=none,id=data{index},file.locking=on",
            *("-device", f"virtio-blk-pci,drive=data{index}"),
        ]
    forward = f",hostfwd=tcp:{ssh_forward}-:22" if ssh_forward else ""
    for index, (nic, tap) in enumerate(nics):
        if tap is None:
            backend = f"user,id=net{index}{forward}"
            forward = ""
        else:
            backend = f"tap,id=net{index},ifname={tap},script=no,downscript=no"
        argv += ["-netdev", backend, "-device", f"virtio-net-pci,netdev=net{index},mac={nic.mac}"]
    if kernel is not None:
        argv += ["-kernel", kernel.kernel, "-append", kernel.append]
        if kernel.initrd is not None:
            argv += ["-initrd", kernel.initrd]
    if seed is not None:
        argv += [
            "-drive",
            f"file={_escaped(seed)},format=raw,if=none,id=seed0,media=cdrom,readonly=on",
            *("-device", "ide-cd,drive=seed0"),
        ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv
