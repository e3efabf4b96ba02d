"""Kernel modules for an initramfs, taken from an unpacked Debian kernel package.

The package carries no ``modules.dep`` (``depmod`` makes it when the package is installed),
so dependencies are read from each module's own ``.modinfo`` ELF section. Compressed modules
are decompressed here: busybox ``insmod`` loads plain ``.ko`` files only.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

from usher.images.catalog import ImageError

SUFFIXES = {".ko": None, ".ko.xz": lzma.decompress, ".ko.gz": gzip.decompress}


def _module_name(path: Path) -> str | None:
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)].replace("-", "_")
    return None


def read_module(path: Path) -> bytes:
    """The module's ELF bytes, decompressed."""
    data = path.read_bytes()
    for suffix, decompress in SUFFIXES.items():
        if path.name.endswith(suffix) and decompress is not None:
            return decompress(data)
    return data


def modinfo_depends(elf: bytes) -> list[str]:
    """The ``depends=`` list of a module's ``.modinfo`` section (an ELF64 little-endian file)."""
    if elf[:6] != b"\x7fELF\x02\x01":
        raise ImageError("not a 64-bit little-endian ELF kernel module")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", elf, shoff + index * shentsize
        )
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if elf[names_at + name : elf.index(b"\0", names_at + name)] == b".modinfo":
            for entry in elf[offset : offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [dep for dep in entry[8:].decode().split(",") if dep]
            return []
    return []


class ModuleTree:
    """The modules of one kernel: ``<root>/lib/modules/<version>/`` of an unpacked package."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: dict[str, Path] = {}
        for path in sorted((directory / "kernel").rglob("*.ko*")):
            name = _module_name(path)
            if name:
                self.files[name] = path
        builtin = directory / "modules.builtin"
        lines = builtin.read_text().split() if builtin.exists() else []
        self.builtin = {name for line in lines if (name := _module_name(Path(line)))}

    def load_order(self, wanted: list[str]) -> list[tuple[str, bytes]]:
        """The modules needed for ``wanted``, dependencies first, as (name, ELF bytes).

        Wanted modules built into the kernel are left out; one it does not have at all raises
        :class:`ImageError`.
        """
        order: list[tuple[str, bytes]] = []
        seen: set[str] = set()

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in seen:
                return
            if name in chain:
                raise ImageError(f"kernel modules depend on each other: {' -> '.join(chain)}")
            elf = read_module(self.files[name])
            for dep in modinfo_depends(elf):
                if dep not in self.files:
                    raise ImageError(f"module {name} needs {dep}, which the kernel lacks")
                visit(dep, (*chain, name))
            seen.add(name)
            order.append((name, elf))

        for name in wanted:
            if name in self.files:
                visit(name, ())
            elif name not in self.builtin:
                raise ImageError(f"kernel {self.directory.name} has no {name} driver")
        return order
