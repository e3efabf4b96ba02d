"""What format an imported disk is in, told from its first bytes (never by a tool that might
open files the disk names), and a raw disk made qcow2.

Only qcow2 and raw are taken: other formats (VMDK, VDI, VHDX, qcow version 1…) can refer to
other files, and ``qemu-img convert -O qcow2`` makes any of them a standalone qcow2 first.
"""

from __future__ import annotations

from pathlib import Path

FORMATS = ("auto", "qcow2", "raw")
"""What an import may say its disk is (``auto``: told from the disk)."""

_MAGIC = (  # (offset, bytes, format): formats qemu-img knows that an import refuses
    (0, b"KDMV", "vmdk"),
    (0, b"# Disk DescriptorFile", "vmdk"),
    (0x40, b"\x7f\x10\xda\xbe", "vdi"),
    (0, b"vhdxfile", "vhdx"),
    (0, b"conectix", "vpc (VHD)"),
    (0, b"QED\0", "qed"),
    (0, b"WithoutFreeSpace", "parallels"),
    (0, b"cloop", "cloop"),
    (0, b"LUKS\xba\xbe", "luks"),
)


class UnsupportedFormat(ValueError):
    """A disk in a format an import does not take, or not in the one it was said to be."""


def detect(path: Path, said: str = "auto") -> str:
    """``qcow2`` or ``raw``: the disk's format, as its first bytes tell (``said`` must agree
    when it is not ``auto``; a disk said to be raw is taken as raw whatever it holds)."""
    if said == "raw":
        return "raw"
    with path.open("rb") as file:
        head = file.read(512)
    if head[:4] == b"QFI\xfb":
        version = int.from_bytes(head[4:8], "big")
        if version in (2, 3):
            return "qcow2"
        found = f"qcow version {version}"
    else:
        found = next(
            (fmt for offset, magic, fmt in _MAGIC if head[offset : offset + len(magic)] == magic),
            "raw",
        )
    if found == "raw" and said == "auto":
        return "raw"
    if found == said:
        return found
    raise UnsupportedFormat(
        f"is a {found} disk{'' if said == 'auto' else f', not {said}'}: import qcow2 or raw "
        f"(qemu-img convert -O qcow2 turns it into a standalone qcow2)"
    )
