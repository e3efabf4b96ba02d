"""A VM as a libvirt domain: the one place Usher's configuration of a guest becomes libvirt XML.

:func:`domain_xml` writes what :func:`usher.vmm.qemu_argv.qemu_argv` puts on a QEMU command
line, in libvirt's words: vCPUs and memory, direct kernel boot (or a disk's boot loader), the
root disk and the data disks (virtio, in ``spec`` order, QEMU's image locks on), the NICs
(user-mode networking, or a Linux bridge), the cloud-init seed as a read-only IDE CD-ROM, and
the serial console as a Unix socket server whose output is appended to the shared
``console.log`` whether or not anyone reads. The domain is named by the VM's id (unique on a
host and in the cluster), its UUID derived from that id, and titled by its name; Usher's
record of the VM (:class:`Record`) rides along in the domain's ``<metadata>``, so a restarted
LNM finds everything it needs in libvirt itself, and a domain without it is not Usher's (a
site's libvirt may run others).
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from usher.model import Image, VMSpec
from usher.vmm.qemu_argv import KernelBoot, Nic, bridge_of

NAMESPACE = "https://usher.invalid/xmlns/libvirt-vm/1"
"""The XML namespace of Usher's ``<metadata>`` element in a domain."""
PREFIX = "usher"
SERIAL_XPATH = "./devices/serial/source"


@dataclass
class Record:
    """What Usher keeps about a VM in its domain's metadata."""

    id: str
    name: str
    spec: VMSpec
    image: Image
    nics: list[Nic]
    seed: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    """What the controller keeps with the VM (``Guest.meta``), reported back as given."""
    crash_seen: bool = False
    """The VM was stopped after it crashed: libvirt still says "crashed", Usher "stopped"."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "spec": self.spec.model_dump(mode="json"),
                "image": self.image.model_dump(mode="json"),
                "nics": [nic.to_json() for nic in self.nics],
                "seed": self.seed,
                "meta": self.meta,
                "crash_seen": self.crash_seen,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Record:
        data = json.loads(text)
        return cls(
            id=data["id"],
            name=data["name"],
            spec=VMSpec.model_validate(data["spec"]),
            image=Image.model_validate(data["image"]),
            nics=[Nic(**nic) for nic in data["nics"]],
            seed=bool(data.get("seed", False)),
            meta={str(k): str(v) for k, v in (data.get("meta") or {}).items()},
            crash_seen=bool(data.get("crash_seen", False)),
        )


@dataclass(frozen=True)
class Paths:
    """Where a domain's files are on the host that runs it."""

    disk: str
    data_disks: tuple[str, ...]
    console_log: str
    console_socket: str
    seed: str | None
    kernel: KernelBoot | None


def metadata_xml(record: Record) -> str:
    """The ``<metadata>`` child element holding ``record`` (for ``virDomainSetMetadata``)."""
    element = ET.Element("vm")
    element.text = record.to_json()
    return ET.tostring(element, encoding="unicode")


def record_of_metadata(xml: str) -> Record:
    """The record in a domain's Usher metadata element (as ``virDomainGetMetadata`` returns
    it); ValueError if it is not one."""
    try:
        element = ET.fromstring(xml)
        return Record.from_json(element.text or "")
    except (ET.ParseError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not an Usher record: {exc}") from exc


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _file_disk(devices: ET.Element, path: str, target: str, *, cdrom: bool = False) -> None:
    disk = _sub(devices, "disk", type="file", device="cdrom" if cdrom else "disk")
    _sub(disk, "driver", name="qemu", type="raw" if cdrom else "qcow2")
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus="ide" if cdrom else "virtio")
    if cdrom:
        _sub(disk, "readonly")


def _virtio_name(index: int) -> str:
    """``vda``, ``vdb``, … ``vdz``, ``vdaa``, …: the guest's name of virtio disk ``index``."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return f"vd{letters}"


def domain_xml(
    record: Record,
    paths: Paths,
    *,
    domain_type: str,
    default_bridge: str | None,
) -> str:
    """The persistent definition of ``record``'s domain (``domain_type``: ``kvm`` or
    ``qemu``, the latter TCG)."""
    spec = record.spec
    root = ET.Element("domain", type=domain_type)
    _sub(root, "name", record.id)
    _sub(root, "uuid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}#{record.id}")))
    _sub(root, "title", record.name)
    metadata = _sub(root, "metadata")
    ET.register_namespace(PREFIX, NAMESPACE)
    _sub(metadata, f"{{{NAMESPACE}}}vm", record.to_json())
    _sub(root, "memory", str(spec.memory_mb), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if paths.kernel is not None:
        _sub(os_, "kernel", paths.kernel.kernel)
        if paths.kernel.initrd is not None:
            _sub(os_, "initrd", paths.kernel.initrd)
        _sub(os_, "cmdline", paths.kernel.append)
    else:
        _sub(os_, "boot", dev="hd")
    _sub(_sub(root, "features"), "acpi")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for index, path in enumerate((paths.disk, *paths.data_disks)):
        _file_disk(devices, path, _virtio_name(index))
    if paths.seed is not None:
        _file_disk(devices, paths.seed, "hdc", cdrom=True)
    for nic in record.nics:
        bridge = bridge_of(nic, default_bridge)
        interface = _sub(devices, "interface", type="user" if bridge is None else "bridge")
        _sub(interface, "mac", address=nic.mac)
        if bridge is not None:
            _sub(interface, "source", bridge=bridge)
        _sub(interface, "model", type="virtio")
    serial = _sub(devices, "serial", type="unix")
    _sub(serial, "source", mode="bind", path=paths.console_socket)
    _sub(serial, "log", file=paths.console_log, append="on")
    _sub(serial, "target", port="0")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(root, encoding="unicode")


def with_console_socket(xml: str, path: str) -> str:
    """``xml`` (a domain's definition) with its serial console's socket at ``path``: the
    target host of a live migration has its own."""
    root = ET.fromstring(xml)
    for source in root.iterfind(SERIAL_XPATH):
        source.set("path", path)
    for source in root.iterfind("./devices/console/source"):
        source.set("path", path)
    return ET.tostring(root, encoding="unicode")
