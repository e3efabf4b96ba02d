"""The image catalogue and per-VM disks in the storage directory every LNM of a cluster shares.

Layout::

    <storage>/images/<name>/image.json   the Image manifest; its files are relative to this dir
    <storage>/images/<name>/disk.qcow2   the base disk (and, for kernel images, kernel + initrd)
    <storage>/vms/<vm_id>/disk.qcow2     a VM's root disk, an overlay on its image's base disk
    <storage>/vms/<vm_id>/data1.qcow2    its data disks (data1, data2, … as in ``spec.disks``)

Directories whose name starts with ``.`` are work in progress (imports, builds) and are not
part of the catalogue: an image is assembled in one and moved into place with ``rename``, so
a reader never sees half an image (while one is replaced, it is briefly absent).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from usher.bounds import NAME_RE
from usher.images import disk_formats
from usher.model import Image, ImageKind, VMSpec

log = logging.getLogger(__name__)

MANIFEST = "image.json"
DISK = "disk.qcow2"

StrPath = str | os.PathLike[str]


class ImageError(Exception):
    """An image or disk operation failed; the message says why, for a person to act on."""


def _check_name(what: str, name: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ImageError(f"invalid {what} {name!r}: use letters, digits, '.', '_', '-'")


def image_dir(storage: StrPath, name: str) -> Path:
    """``<storage>/images/<name>/``; raises :class:`ImageError` for a name that is no name."""
    _check_name("image name", name)
    return Path(storage) / "images" / name


def vm_dir(storage: StrPath, vm_id: str) -> Path:
    """``<storage>/vms/<vm_id>/``: where a VM's disks live."""
    _check_name("VM id", vm_id)
    return Path(storage) / "vms" / vm_id


def data_disk_name(index: int) -> str:
    """The file name of a VM's data disk ``index`` (1 for the first of ``spec.disks``)."""
    if index < 1:
        raise ImageError(f"data disks are numbered from 1, not {index}")
    return f"data{index}.qcow2"


def vm_disks(storage: StrPath, vm_id: str) -> list[Path]:
    """A VM's disk files that exist, in order: the root disk (``disk.qcow2``) first, then its
    data disks ``data1.qcow2``, ``data2.qcow2``, … up to the first one missing. Empty for a
    VM whose root disk was never made."""
    directory = vm_dir(storage, vm_id)
    root = directory / DISK
    if not root.exists():
        return []
    disks = [root]
    index = 1
    while (data := directory / data_disk_name(index)).exists():
        disks.append(data)
        index += 1
    return disks


def image_path(storage: StrPath, image: Image, role: str) -> Path:
    """Absolute path of ``image``'s file for ``role`` (``kernel``, ``initrd``, ``disk``)."""
    try:
        relative = image.files[role]
    except KeyError:
        raise ImageError(f"image {image.name} has no {role} file") from None
    return (image_dir(storage, image.name) / relative).absolute()


def read_manifest(storage: StrPath, name: str) -> Image | None:
    """The manifest of image ``name``; None if there is no such image.

    Raises :class:`ImageError` when the manifest exists but cannot be read or parsed.
    """
    path = image_dir(storage, name) / MANIFEST
    try:
        return Image.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        raise ImageError(f"broken manifest {path}: {exc}") from exc


def list_images(storage: StrPath) -> list[Image]:
    """Every image in the catalogue, by name; broken manifests are logged and skipped."""
    root = Path(storage) / "images"
    if not root.is_dir():
        return []
    images: list[Image] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            image = read_manifest(storage, entry.name)
        except ImageError as exc:
            log.warning("skipping image %s: %s", entry.name, exc)
            continue
        if image is not None:
            images.append(image)
    return images


def write_manifest(storage: StrPath, image: Image) -> Path:
    """Write ``image.json`` into the image's directory atomically; return its path."""
    return _write_manifest_in(image_dir(storage, image.name), image)


def _write_manifest_in(directory: Path, image: Image) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MANIFEST
    fd, tmp = tempfile.mkstemp(prefix=".image-", suffix=".json", dir=directory)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(image.model_dump_json(indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def staging_dir(storage: StrPath, name: str, purpose: str) -> Path:
    """A fresh hidden directory under ``<storage>/images/`` to assemble image ``name`` in."""
    _check_name("image name", name)
    root = Path(storage) / "images"
    root.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{purpose}-{name}-", dir=root))
    staged.chmod(0o755)
    return staged


def publish_kernel_image(
    storage: StrPath,
    staged: Path,
    name: str,
    files: dict[str, str],
    *,
    cmdline: str,
    description: str,
    cloud_init: bool = False,
) -> Image:
    """Publish the direct-boot image assembled in ``staged`` (``files`` by role: kernel,
    initrd, disk) as ``name``, replacing one of that name (a build made again)."""
    image = Image(
        name=name,
        kind=ImageKind.KERNEL,
        files=files,
        size_bytes=sum((staged / path).stat().st_size for path in files.values()),
        cmdline=cmdline,
        cloud_init=cloud_init,
        description=description,
    )
    return publish(storage, staged, image, replace=True)


def publish(storage: StrPath, staged: Path, image: Image, *, replace: bool) -> Image:
    """Write ``image``'s manifest into ``staged`` and move that directory into the catalogue.

    Without ``replace`` an existing image of the same name makes this fail (and removes
    ``staged``); with it, the old image directory is swapped out and deleted.
    """
    final = image_dir(storage, image.name)
    try:
        _write_manifest_in(staged, image)
        if final.exists():
            if not replace:
                raise ImageError(f"image {image.name} already exists")
            old = staged.with_name(f".old-{image.name}-{staged.name}")
            os.rename(final, old)
            os.rename(staged, final)
            shutil.rmtree(old)
        else:
            os.rename(staged, final)
    except OSError as exc:
        shutil.rmtree(staged, ignore_errors=True)
        raise ImageError(f"cannot store image {image.name}: {exc}") from exc
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return image


def qemu_img(*args: str) -> str:
    """Run ``qemu-img`` and return its stdout; raises :class:`ImageError` with its stderr."""
    try:
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ImageError("qemu-img is not installed (Debian package qemu-utils)") from None
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise ImageError(f"qemu-img {args[0]} failed: {detail}")
    return proc.stdout


QCOW2_DATA_FILE = 1 << 2
"""Incompatible-features bit of a qcow2 whose data lives in an external file."""


def qcow2_references(path: Path) -> list[str]:
    """What a qcow2 file's header says it reads besides itself: a backing file (any name,
    ``json:`` ones included) or an external data file. Read from the header itself, before
    any tool would open those files."""
    with path.open("rb") as fh:
        header = fh.read(104)
    if len(header) < 72 or header[:4] != b"QFI\xfb":
        return []
    found = []
    offset, size = struct.unpack(">QI", header[8:20])
    if offset or size:
        found.append("a backing file")
    version = struct.unpack(">I", header[4:8])[0]
    if version >= 3 and len(header) >= 80:
        incompatible = struct.unpack(">Q", header[72:80])[0]
        if incompatible & QCOW2_DATA_FILE:
            found.append("an external data file")
    return found


def _check_qcow2(path: Path, shown_as: str) -> None:
    """A standalone qcow2: no backing file, no external data file, nothing it would read
    but itself (a VM booted from an image that names a host file would read that file)."""
    refs = qcow2_references(path)
    if refs:
        raise ImageError(
            f"{shown_as} has {' and '.join(refs)}: an image must refer to nothing but itself "
            "(make it standalone with 'qemu-img convert -O qcow2')"
        )
    try:
        info = json.loads(qemu_img("info", "--output=json", "-U", str(path)))
    except ImageError as exc:
        raise ImageError(f"{shown_as} is not a disk image qemu-img can read: {exc}") from exc
    fmt = info.get("format")
    if fmt != "qcow2":
        raise ImageError(f"{shown_as} is not a qcow2 disk image (qemu-img sees {fmt!r})")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImageError(
            f"{shown_as} has a backing file ({info.get('backing-filename')}): make it "
            "standalone with 'qemu-img convert -O qcow2' first"
        )
    if specific.get("data-file") or specific.get("data-file-raw"):
        raise ImageError(f"{shown_as} refers to an external data file: an image must stand alone")


def import_disk(
    storage: StrPath,
    name: str,
    source: StrPath | BinaryIO,
    description: str = "",
    *,
    replace: bool = False,
    fmt: str = "auto",
    shown_as: str | None = None,
    cloud_init: bool = False,
) -> Image:
    """Add a user's bootable disk (a path or a binary stream) as image ``name``: a qcow2, or
    a raw disk (made qcow2); ``fmt`` says which, or ``auto`` (see :mod:`.disk_formats`).
    ``cloud_init``: the disk runs cloud-init, so its VMs get a NoCloud seed.

    The disk ends up as ``<storage>/images/<name>/disk.qcow2``, checked with ``qemu-img
    info``: anything but a standalone qcow2 is refused with :class:`ImageError`, as is an
    existing name unless ``replace``, and (even then) an image whose base disk backs VM disks.
    Errors name the disk ``shown_as`` (default: its path).
    """
    if image_dir(storage, name).exists():
        if not replace:
            raise ImageError(f"image {name} already exists")
        _check_unused(storage, name)
    if shown_as is None:
        is_path = isinstance(source, str | os.PathLike)
        shown_as = os.fspath(source) if is_path else f"<{name} upload>"
    staged = staging_dir(storage, name, "import")
    try:
        disk, upload = staged / DISK, staged / "upload"
        if isinstance(source, str | os.PathLike):
            if not Path(source).is_file():
                raise ImageError(f"{shown_as}: no such file")
            shutil.copyfile(source, upload)
        else:
            with upload.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        try:
            found = disk_formats.detect(upload, fmt)
        except disk_formats.UnsupportedFormat as exc:
            raise ImageError(f"{shown_as} {exc}") from None
        if found == "raw":
            qemu_img("convert", "-f", "raw", "-O", "qcow2", str(upload), str(disk))
            upload.unlink()
        else:
            upload.rename(disk)
        _check_qcow2(disk, shown_as)
        image = Image(
            name=name,
            kind=ImageKind.DISK,
            files={"disk": DISK},
            size_bytes=disk.stat().st_size,
            cloud_init=cloud_init,
            description=description,
        )
        if replace and image_dir(storage, name).exists():  # again: a VM may have come
            _check_unused(storage, name)  # during the copy (a moment is left, not minutes)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return publish(storage, staged, image, replace=replace)


def qcow2_backing_file(path: Path) -> str | None:
    """The backing file name written in a qcow2 header (None for none or not a qcow2)."""
    with path.open("rb") as fh:
        header = fh.read(20)
        if len(header) < 20 or header[:4] != b"QFI\xfb":
            return None
        offset, size = struct.unpack(">QI", header[8:20])
        if not offset or not size:
            return None
        fh.seek(offset)
        return fh.read(size).decode(errors="replace")


def overlays_of(storage: StrPath, image: Image) -> list[str]:
    """Ids of the VMs whose disk overlay is backed by ``image``'s base disk."""
    if "disk" not in image.files:
        return []
    base = image_path(storage, image, "disk")
    root = Path(storage) / "vms"
    users = []
    for disk in sorted(root.glob(f"*/{DISK}")):
        backing = qcow2_backing_file(disk)
        if backing and (disk.parent / backing).absolute() == base:
            users.append(disk.parent.name)
    return users


def _check_unused(storage: StrPath, name: str) -> None:
    image = read_manifest(storage, name)
    users = overlays_of(storage, image) if image is not None else []
    if users:
        raise ImageError(f"image {name} is the base of VM disks: {', '.join(users)}")


def delete_image(storage: StrPath, name: str, *, force: bool = False) -> bool:
    """Remove image ``name``; False if there was none.

    An image whose base disk still backs VM overlays is kept (:class:`ImageError` names the
    VMs) unless ``force``: those VMs could not boot again without it.
    """
    directory = image_dir(storage, name)
    if not directory.exists():
        return False
    if not force:
        _check_unused(storage, name)
    shutil.rmtree(directory)
    return True


GIB = 1 << 30


def virtual_size(path: Path) -> int:
    """The size in bytes the guest sees of the disk image at ``path`` (``qemu-img info``; read
    with ``-U``, so also while a QEMU holds the image)."""
    info = json.loads(qemu_img("info", "--output=json", "-U", str(path)))
    return int(info["virtual-size"])


def disk_in_use(path: Path) -> bool:
    """Whether a QEMU (on any host of an NFSv4 storage) holds the disk at ``path`` open for
    writing: its image lock stops ``qemu-img`` from opening it (the check a node makes before
    it removes disks another node's copy may run on)."""
    try:
        qemu_img("info", "--output=json", str(path))
    except ImageError as exc:
        return "lock" in str(exc)
    return False


def create_overlay(storage: StrPath, image: Image, vm_id: str, size_gb: int | None = None) -> Path:
    """Create ``<storage>/vms/<vm_id>/disk.qcow2``, a qcow2 overlay on ``image``'s base disk,
    of ``size_gb`` GiB (None: the base disk's size). A size smaller than the base disk's is
    refused: the guest's file systems end where the base disk does.

    Idempotent: an existing overlay is kept as it is (it holds the VM's writes)."""
    base = image_path(storage, image, "disk")
    if not base.is_file():
        raise ImageError(f"image {image.name} has lost its base disk {base}")
    directory = vm_dir(storage, vm_id)
    disk = directory / DISK
    if disk.exists():
        return disk
    size: list[str] = []
    if size_gb is not None:
        base_size = virtual_size(base)
        if size_gb * GIB < base_size:
            raise ImageError(
                f"a root disk of {size_gb} GiB is smaller than image {image.name}'s disk "
                f"({base_size / GIB:.2f} GiB)"
            )
        size = [f"{size_gb}G"]
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{DISK}.new"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(tmp), *size)
    os.replace(tmp, disk)
    return disk


def create_data_disks(storage: StrPath, vm_id: str, sizes_gb: list[int]) -> list[Path]:
    """Create the VM's data disks ``data1.qcow2``, ``data2.qcow2``, … of ``sizes_gb`` GiB,
    blank qcow2 files (allocated as the guest writes). Idempotent: a data disk that exists is
    kept as it is. Returns their paths, in order."""
    directory = vm_dir(storage, vm_id)
    directory.mkdir(parents=True, exist_ok=True)
    disks = []
    for index, size_gb in enumerate(sizes_gb, start=1):
        disk = directory / data_disk_name(index)
        if not disk.exists():
            tmp = directory / f".{disk.name}.new"
            qemu_img("create", "-q", "-f", "qcow2", str(tmp), f"{size_gb}G")
            os.replace(tmp, disk)
        disks.append(disk)
    return disks


def create_vm_disks(storage: StrPath, image: Image, vm_id: str, spec: VMSpec) -> None:
    """A new VM's disks: its root overlay on ``image`` of ``spec.disk_gb`` GiB and its data
    disks of ``spec.disks``; none of them is left if one cannot be made."""
    try:
        create_overlay(storage, image, vm_id, spec.disk_gb)
        create_data_disks(storage, vm_id, [int(disk["size_gb"]) for disk in spec.disks])
    except BaseException:
        remove_vm_disks(storage, vm_id)
        raise


def grow_disk(path: Path, size_gb: int) -> None:
    """Grow the qcow2 disk at ``path`` (no QEMU may have it open) to ``size_gb`` GiB; a disk
    that is that size already is left alone, a smaller size is refused (disks never shrink)."""
    current = virtual_size(path)
    if size_gb * GIB < current:
        raise ImageError(
            f"{path.name} is {current / GIB:.2f} GiB: it cannot shrink to {size_gb} GiB"
        )
    if size_gb * GIB > current:
        qemu_img("resize", "-q", "-f", "qcow2", str(path), f"{size_gb}G")


def remove_vm_disks(storage: StrPath, vm_id: str) -> None:
    """Remove ``<storage>/vms/<vm_id>/`` and everything in it. Idempotent."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(vm_dir(storage, vm_id))
