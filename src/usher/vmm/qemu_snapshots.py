"""Snapshots and copies of disks for the ``qemu`` driver.

A snapshot is a qcow2 *internal* snapshot of the same name in every disk of the VM (its root
``disk.qcow2`` and its data disks, never the cloud-init seed): taken through QMP while QEMU
runs (``blockdev-snapshot-internal-sync`` on every disk in one ``transaction``: all at the
same instant, or none), with ``qemu-img snapshot`` while it does not. Disk-only snapshots
are crash-consistent; a revert therefore needs the VM stopped (``qemu-img snapshot -a``).

What a snapshot holds (``size_bytes``) is the guest data the disks had allocated in their own
layer when it was taken (``qemu-img map``); it is kept, with whether the VM ran then, in
``snapshots.json`` beside the disks, since qcow2 records neither.

Copies read a stopped VM's disks, or one of its snapshots with ``-U`` (another QEMU holds
the image): a clone's root keeps the image's base disk as its backing (``qemu-img convert
-B``), so it holds only the guest's own data; an exported root disk is flattened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from usher.images import catalog
from usher.model import Snapshot, VMState, now
from usher.vmm.base import DriverError, InvalidTransition
from usher.vmm.qemu_domain import Domain
from usher.vmm.qemu_guests import Guests

NOTES = "snapshots.json"
"""Beside a VM's disks: what each of its snapshots holds and whether the VM ran, by name."""
_LIVE = frozenset({VMState.RUNNING, VMState.PAUSED})
_SNAPSHOTTABLE = _LIVE | {VMState.STOPPED}


async def qemu_img(*args: str) -> str:
    """Run ``qemu-img``; its stdout. Cancelled, it kills ``qemu-img`` before re-raising."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "qemu-img",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise DriverError("qemu-img is not installed (Debian package qemu-utils)") from None
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise DriverError(f"qemu-img {args[0]} failed: {detail}")
    return out.decode(errors="replace")


class QemuSnapshots:
    """Snapshots and disk copies of the VMs of ``guests``; see :class:`usher.vmm.base.Driver`
    for what each method promises."""

    def __init__(self, guests: Guests) -> None:
        self._guests = guests
        self._storage = guests.files.storage

    def _domain(self, vm_id: str, action: str) -> Domain:
        dom = self._guests.get(vm_id)
        if dom.state not in _SNAPSHOTTABLE or dom.incoming:
            raise InvalidTransition(vm_id, dom.state, action)
        return dom

    def _disks(self, vm_id: str) -> list[Path]:
        disks = catalog.vm_disks(self._storage, vm_id)
        if not disks:
            raise DriverError(f"VM {vm_id} has no disk in {self._storage}")
        return disks

    # --- snapshots -------------------------------------------------------------------------

    async def create(self, vm_id: str, name: str) -> Snapshot:
        dom = self._domain(vm_id, "snapshot")
        disks = self._disks(vm_id)
        if name in await self._names(dom, disks):
            raise DriverError(f"VM {vm_id} has a snapshot {name!r} already")
        size = await self.usage(vm_id)
        running = dom.state in _LIVE
        if running:
            devices = await self._devices(dom, disks)
            actions = [
                {"type": "blockdev-snapshot-internal-sync", "data": {"device": d, "name": name}}
                for d in devices
            ]
            await self._guests.monitor(dom).execute("transaction", {"actions": actions})
        else:
            await self._drop_partial(disks, name)
            await self._each_disk(disks, ["snapshot", "-c", name], undo=["snapshot", "-d", name])
        snap = Snapshot(name=name, created_at=now(), size_bytes=size, running=running)
        notes = self._read_notes(vm_id)
        notes[name] = {"size_bytes": size, "running": running}
        self._write_notes(vm_id, notes)
        return snap

    async def listed(self, vm_id: str) -> list[Snapshot]:
        dom = self._guests.get(vm_id)
        disks = catalog.vm_disks(self._storage, vm_id)
        if not disks:
            return []
        found = await self._snapshots(dom, disks)
        notes = self._read_notes(vm_id)
        return [snap.model_copy(update=notes.get(snap.name, {})) for snap in found]

    async def revert(self, vm_id: str, name: str) -> None:
        dom = self._guests.get(vm_id)
        if dom.state is not VMState.STOPPED:
            raise InvalidTransition(vm_id, dom.state, "revert (stop it first)")
        disks = self._disks(vm_id)
        if name not in await self._names(dom, disks):
            raise DriverError(f"VM {vm_id} has no snapshot {name!r}")
        sizes = [await asyncio.to_thread(catalog.virtual_size, disk) for disk in disks]
        await self._each_disk(disks, ["snapshot", "-a", name])
        # a snapshot from before a resize brings the disk's old size back: the disks keep
        # the size the VM's record says (the guest grows its file systems at its next boot)
        for disk, size in zip(disks, sizes, strict=True):
            if await asyncio.to_thread(catalog.virtual_size, disk) < size:
                await qemu_img("resize", str(disk), str(size))

    async def delete(self, vm_id: str, name: str) -> None:
        dom = self._domain(vm_id, "delete a snapshot of")
        disks = self._disks(vm_id)
        if name not in await self._names(dom, disks):
            raise DriverError(f"VM {vm_id} has no snapshot {name!r}")
        if dom.state in _LIVE:
            monitor = self._guests.monitor(dom)
            for device in await self._devices(dom, disks):
                await monitor.execute(
                    "blockdev-snapshot-delete-internal-sync", {"device": device, "name": name}
                )
        else:
            await self._each_disk(disks, ["snapshot", "-d", name])
        notes = self._read_notes(vm_id)
        notes.pop(name, None)
        self._write_notes(vm_id, notes)

    async def usage(self, vm_id: str) -> int:
        """Bytes of data allocated in the disks' own layer (not their base disk's)."""
        self._guests.get(vm_id)
        total = 0
        for disk in self._disks(vm_id):
            extents = json.loads(await qemu_img("map", "--output=json", "-U", str(disk)))
            total += sum(e["length"] for e in extents if e.get("data") and e.get("depth") == 0)
        return total

    # --- copies ----------------------------------------------------------------------------

    async def clone_disks(self, vm_id: str, new_vm_id: str, snapshot: str | None) -> None:
        disks, shared = await self._source(vm_id, snapshot, "copy the disks of")
        target = catalog.vm_dir(self._storage, new_vm_id)
        if catalog.vm_disks(self._storage, new_vm_id):
            raise DriverError(f"cannot copy disks to VM {new_vm_id}: it has disks already")
        target.mkdir(parents=True, exist_ok=True)
        try:
            for index, disk in enumerate(disks):
                base = catalog.qcow2_backing_file(disk) if index == 0 else None
                backing = ["-B", str(disk.parent / base), "-F", "qcow2"] if base else []
                await self._convert(disk, target / disk.name, snapshot, shared, backing)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    async def export_disk(self, vm_id: str, staging: str, snapshot: str | None) -> int:
        disks, shared = await self._source(vm_id, snapshot, "export the disk of")
        directory = Path(self._storage) / "images" / staging
        if not directory.is_dir():
            raise DriverError(f"no staging directory {staging} in the image catalogue")
        disk = directory / catalog.DISK
        await self._convert(disks[0], disk, snapshot, shared, [])
        return disk.stat().st_size

    async def _source(
        self, vm_id: str, snapshot: str | None, action: str
    ) -> tuple[list[Path], bool]:
        """The disks to copy, and whether another QEMU holds them (read with ``-U``)."""
        dom = self._domain(vm_id, action)
        if snapshot is None and dom.state is not VMState.STOPPED:
            raise InvalidTransition(vm_id, dom.state, f"{action} (without a snapshot)")
        disks = self._disks(vm_id)
        if snapshot is not None and snapshot not in await self._names(dom, disks):
            raise DriverError(f"VM {vm_id} has no snapshot {snapshot!r}")
        return disks, dom.state in _LIVE

    @staticmethod
    async def _convert(
        source: Path, target: Path, snapshot: str | None, shared: bool, backing: list[str]
    ) -> None:
        """``qemu-img convert`` ``source`` (or its ``snapshot``) to the qcow2 ``target``,
        written beside it first so that no half a disk is ever at ``target``."""
        tmp = target.with_name(f".{target.name}.new")
        args = ["convert", "-O", "qcow2", *(["-U"] if shared else [])]
        if snapshot is not None:
            args += ["-l", f"snapshot.name={snapshot}"]
        try:
            await qemu_img(*args, *backing, str(source), str(tmp))
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # --- what the disks hold ---------------------------------------------------------------

    async def _names(self, dom: Domain, disks: list[Path]) -> set[str]:
        return {snap.name for snap in await self._snapshots(dom, disks)}

    async def _snapshots(self, dom: Domain, disks: list[Path]) -> list[Snapshot]:
        """The snapshots every disk has (a snapshot half taken counts as none), in the root
        disk's order: from QEMU while it runs, from the files otherwise."""
        tables: list[list[dict[str, Any]]] = []
        if dom.state in _LIVE and dom.monitor is not None:
            by_file = await self._block_info(dom)
            tables = [by_file.get(str(disk), {}).get("snapshots", []) for disk in disks]
        else:
            for disk in disks:
                info = json.loads(await qemu_img("info", "--output=json", "-U", str(disk)))
                tables.append(info.get("snapshots", []))
        common = set.intersection(*({s["name"] for s in table} for table in tables))
        return [
            Snapshot(
                name=s["name"],
                created_at=s.get("date-sec", 0) + s.get("date-nsec", 0) / 1e9,
                size_bytes=s.get("vm-state-size", 0),
            )
            for s in tables[0]
            if s["name"] in common
        ]

    async def _block_info(self, dom: Domain) -> dict[str, dict[str, Any]]:
        """QEMU's image info of each block device, by file name; ``device`` added."""
        found: dict[str, dict[str, Any]] = {}
        for block in await self._guests.monitor(dom).execute("query-block"):
            inserted = block.get("inserted") or {}
            image = dict(inserted.get("image") or {})
            file = _file_name(str(inserted.get("file") or ""))
            if file:
                image["device"] = block.get("device") or block.get("qdev")
                found[file] = image
        return found

    async def _devices(self, dom: Domain, disks: list[Path]) -> list[str]:
        """The QEMU block device of each of ``disks``."""
        by_file = await self._block_info(dom)
        missing = [disk.name for disk in disks if str(disk) not in by_file]
        if missing:
            raise DriverError(f"VM {dom.id}: QEMU does not have {', '.join(missing)} open")
        return [str(by_file[str(disk)]["device"]) for disk in disks]

    @staticmethod
    async def _drop_partial(disks: list[Path], name: str) -> None:
        """Delete snapshot ``name`` from the disks that have it while others do not (what a
        snapshot cut short left: an LNM killed between two disks), so taking it again never
        leaves a disk with two of that name (``qemu-img snapshot -a`` would take the older)."""
        for disk in disks:
            info = json.loads(await qemu_img("info", "--output=json", str(disk)))
            if any(snap["name"] == name for snap in info.get("snapshots", [])):
                await qemu_img("snapshot", "-d", name, str(disk))

    @staticmethod
    async def _each_disk(disks: list[Path], args: list[str], undo: list[str] | None = None) -> None:
        """``qemu-img ARGS disk`` on every disk; if one fails, ``qemu-img UNDO`` on those done."""
        done: list[Path] = []
        try:
            for disk in disks:
                await qemu_img(*args, str(disk))
                done.append(disk)
        except BaseException:
            for disk in done if undo else []:
                with contextlib.suppress(DriverError):
                    await qemu_img(*(undo or []), str(disk))
            raise

    def _read_notes(self, vm_id: str) -> dict[str, dict[str, Any]]:
        """What :data:`NOTES` says of each snapshot (``size_bytes``, ``running``); what does
        not read is left out."""
        path = catalog.vm_dir(self._storage, vm_id) / NOTES
        try:
            notes = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(notes, dict):
            return {}
        return {
            str(name): {
                "size_bytes": note["size_bytes"] if isinstance(note["size_bytes"], int) else 0,
                "running": note.get("running") is True,
            }
            for name, note in notes.items()
            if isinstance(note, dict) and "size_bytes" in note
        }

    def _write_notes(self, vm_id: str, notes: dict[str, dict[str, Any]]) -> None:
        path = catalog.vm_dir(self._storage, vm_id) / NOTES
        tmp = path.with_name(f".{NOTES}.new")
        tmp.write_text(json.dumps(notes), encoding="utf-8")
        os.replace(tmp, path)


def _file_name(file: str) -> str:
    """The file behind QEMU's name of an image: a ``json:`` name (given when the drive has
    options, such as ``file.locking``) names it in ``file.filename``."""
    if not file.startswith("json:"):
        return file
    try:
        spec = json.loads(file.removeprefix("json:"))
    except ValueError:
        return ""
    inner = spec.get("file") if isinstance(spec, dict) else None
    name = inner.get("filename") if isinstance(inner, dict) else spec.get("filename")
    return str(name or "")
