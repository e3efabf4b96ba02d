"""Copies of a VM's disks: a clone (a new VM) and an image from a VM (a catalogue template).

A **clone** is a create (:meth:`usher.ctrl.engine.coordinator.Engine.create` with an
:class:`Origin`): the new VM is named, authorized (``vm.start``, and ``vm.clone`` on its
source), checked by the request hooks (``clone_request``: quotas count it as a new VM),
placed and given its own NICs as any new VM is; its step has the source's node copy the
source's disks (stopped, or a snapshot of it) as the new VM's, under the source's lock, and
then boots it as a start would.

An **image from a VM** is an operation on the VM (``image_from_vm``): its node writes the
root disk (or a snapshot's) flattened into a staging directory of the catalogue, and the
controller adds the source image's kernel and initrd (direct kernel boot) and publishes the
whole atomically, as an import does (:func:`usher.images.catalog.publish`).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usher.ctrl.authz import authorize
from usher.ctrl.engine.crew import Crew
from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.engine.images import ImageCache
from usher.ctrl.engine.runner import Runner, Step
from usher.ctrl.engine.steps import Steps
from usher.ctrl.engine.transitions import (
    NEEDS_CAPABILITY,
    check_still_admissible,
    copy_source_problem,
)
from usher.ctrl.nodes import CommandFailed, NodeGone
from usher.images import catalog
from usher.model import VM, CreateVMs, Image, Operation, OpKind, OpRequest, Principal, VMState


@dataclass(frozen=True)
class Origin:
    """Where a clone's disks come from: ``source`` as it is (stopped), or its ``snapshot``."""

    source: VM
    snapshot: str | None = None


def clone_body(origin: Origin, name: str, node: str | None, kwargs: dict[str, Any]) -> CreateVMs:
    """The create a clone of ``origin`` named ``name`` is: the source's size, image and
    kwargs (``kwargs`` over them), in its virtual cluster; its NICs are its own."""
    spec = origin.source.spec.model_dump(mode="json", exclude={"nics", "kwargs"})
    same = {key: value for key, value in spec.items() if key in CreateVMs.model_fields}
    return CreateVMs(
        names=[name],
        cluster=origin.source.cluster,
        node=node,
        kwargs={**origin.source.spec.kwargs, **kwargs},
        **same,
    )


def problem_error(problem: str) -> RequestError:
    """A copy that cannot be made: 404 for a snapshot the VM does not have, 409 otherwise."""
    status = 404 if " has no snapshot " in problem else 409
    return RequestError(status, f"{problem}; nothing was changed")


class Copies:
    def __init__(self, crew: Crew, runner: Runner, images: ImageCache, steps: Steps) -> None:
        self.crew = crew
        self.runner = runner
        self.images = images
        self.steps = steps

    # --- clones ----------------------------------------------------------------------------

    async def admit_clone(self, principal: Principal, origin: Origin) -> None:
        """What a clone needs beyond a create: the caller may clone the source
        (``vm.clone``), whose disks (or snapshot) can be copied now by its node's driver."""
        source = origin.source
        await authorize(
            self.crew.plugins,
            principal,
            "vm.clone",
            {"vms": [source.model_dump(mode="json")], "cluster": source.cluster},
        )
        problem = copy_source_problem(OpKind.CLONE, source, origin.snapshot)
        if problem is not None:
            raise problem_error(problem)
        self.check_capability(OpKind.CLONE, source)

    def check_capability(self, kind: OpKind, vm: VM) -> None:
        """409 if ``vm``'s node's driver declares it cannot copy disks."""
        node = self.crew.nodes.get(vm.node or "")
        needed = NEEDS_CAPABILITY[kind]
        if node is not None and node.capabilities and needed not in node.capabilities:
            raise RequestError(
                409,
                f"cannot {kind.value.replace('_', ' ')} {vm.name}: the {node.driver} driver of "
                f"node {node.name} cannot {needed.value}; nothing was changed",
            )

    def clone_step(self, req: OpRequest, origin: Origin) -> Step:
        """Copy the source's disks as the new VM's (on the source's node, holding the
        source's lock, so it cannot start meanwhile), then boot the new VM."""
        start = self.steps.start(req)
        crew = self.crew

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            async with crew.locks.hold(origin.source.id):
                source = await crew.store.get_vm(origin.source.id)
                problem = (
                    f"{origin.source.name} is gone"
                    if source is None
                    else copy_source_problem(OpKind.CLONE, source, origin.snapshot)
                )
                if source is None or problem is not None:
                    await crew.set_state(vm, VMState.ERROR, problem, op)
                    raise StepFailed(f"{vm.name}: {problem}")
                args = {"new_vm_id": vm.id, "snapshot": origin.snapshot}
                try:
                    await crew.nodes.link(source.node).call(
                        "clone_disks",
                        vm_id=source.id,
                        args=args,
                        timeout=crew.settings.command_timeout,
                    )
                except (CommandFailed, NodeGone) as exc:
                    why = f"its disks could not be copied from {source.name}: {exc}"
                    await crew.set_state(vm, VMState.ERROR, why, op)
                    raise StepFailed(f"{vm.name}: {why}") from exc
            details = await start(op, vm)
            return {"source": source.id, "snapshot": origin.snapshot, **(details or {})}

        return step

    # --- images from VMs -------------------------------------------------------------------

    async def admit_image(
        self, principal: Principal, vm: VM, name: str, snapshot: str | None
    ) -> None:
        """What an image from ``vm`` needs beyond an action on it: the caller may import
        images (``image.import``), ``name`` is free, and the disk (or snapshot) can be copied
        now."""
        await authorize(self.crew.plugins, principal, "image.import", {"image": name})
        storage = self.crew.settings.storage_dir
        try:
            taken = await asyncio.to_thread(catalog.read_manifest, storage, name)
        except catalog.ImageError as exc:
            raise RequestError(409, f"image {name} exists already (and is broken: {exc})") from exc
        if taken is not None:
            raise RequestError(409, f"image {name} exists already; nothing was changed")
        problem = copy_source_problem(OpKind.IMAGE_FROM_VM, vm, snapshot)
        if problem is not None:
            raise problem_error(problem)

    def image_step(self, req: OpRequest, description: str) -> Step:
        """Have the node write the flattened root disk into a staging directory, add the
        source image's other files, publish."""

        async def step(op: Operation, vm: VM) -> dict[str, Any] | None:
            check_still_admissible(op, vm)
            name, snapshot = req.kwargs.get("image_name"), req.kwargs.get("snapshot")
            if not isinstance(name, str):
                raise StepFailed(f"{vm.name}: the request names no image")
            problem = copy_source_problem(OpKind.IMAGE_FROM_VM, vm, snapshot)
            if problem is not None:
                raise StepFailed(problem)
            try:
                base = await self.images.image(vm.spec.image)
            except RequestError as exc:
                raise StepFailed(f"{vm.name}: {exc.message}") from exc
            storage = self.crew.settings.storage_dir
            staged = await asyncio.to_thread(catalog.staging_dir, storage, name, "from-vm")
            try:
                await self.runner.call(
                    op,
                    vm,
                    "export_disk",
                    undo_state=vm.state,
                    args={"staging": staged.name, "snapshot": snapshot},
                )
                what = f"from VM {vm.name}" + (f", snapshot {snapshot}" if snapshot else "")
                image = await asyncio.to_thread(
                    _publish, storage, staged, base, name, description or what
                )
            except catalog.ImageError as exc:
                raise StepFailed(f"{vm.name}: {exc}") from exc
            finally:
                shutil.rmtree(staged, ignore_errors=True)  # (gone once published)
            self.images.forget(name)
            return {"image": name, "snapshot": snapshot, "size_bytes": image.size_bytes}

        return step


def _publish(storage: Path, staged: Path, base: Image, name: str, description: str) -> Image:
    """Publish ``staged`` (holding the exported ``disk.qcow2``) as image ``name``, with the
    other files of ``base`` (a kernel image's kernel and initrd) copied beside it."""
    disk = staged / catalog.DISK
    if not disk.is_file():
        raise catalog.ImageError("the node wrote no disk")
    references = catalog.qcow2_references(disk)
    if references:  # a standalone disk was asked for: a node cannot make it read host files
        raise catalog.ImageError(f"the exported disk has {' and '.join(references)}")
    files = {"disk": catalog.DISK}
    for role in sorted(set(base.files) - {"disk"}):
        relative = Path(base.files[role]).name
        shutil.copyfile(catalog.image_path(storage, base, role), staged / relative)
        files[role] = relative
    image = Image(
        name=name,
        kind=base.kind,
        files=files,
        size_bytes=sum((staged / f).stat().st_size for f in files.values()),
        cmdline=base.cmdline,
        cloud_init=base.cloud_init,
        description=description[:1000],
    )
    return catalog.publish(storage, staged, image, replace=False)
