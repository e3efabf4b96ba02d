"""The image catalogue as the engine reads it: briefly cached, and as a node is sent it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from usher.ctrl.engine.adoption import meta_of
from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.engine.guest_seeds import GuestSeeds
from usher.images import catalog
from usher.model import VM, Image, VMSpec, now

CACHE_SECONDS = 5.0


class ImageCache:
    def __init__(self, storage_dir: Path, seeds: GuestSeeds | None = None) -> None:
        self.storage_dir = storage_dir
        self.seeds = seeds
        self._entries: dict[str, tuple[float, Image, dict[str, Any]]] = {}
        self._disk_sizes: dict[str, tuple[float, int]] = {}

    async def image(self, name: str) -> Image:
        """The catalogue entry of image ``name``; RequestError 404 if there is none."""
        return (await self._entry(name))[0]

    def forget(self, name: str) -> None:
        """Read image ``name`` afresh next time (it was imported, replaced or deleted)."""
        self._entries.pop(name, None)
        self._disk_sizes.pop(name, None)

    async def disk_bytes(self, name: str) -> int:
        """The size of image ``name``'s base disk as its guests see it, in bytes: what a VM's
        root disk is unless it asks for more. RequestError 404 without such an image, 422
        when its disk cannot be read."""
        cached = self._disk_sizes.get(name)
        if cached is not None and now() - cached[0] < CACHE_SECONDS:
            return cached[1]
        image = await self.image(name)
        try:
            base = catalog.image_path(self.storage_dir, image, "disk")
            size = await asyncio.to_thread(catalog.virtual_size, base)
        except (catalog.ImageError, OSError, ValueError, KeyError) as exc:
            raise RequestError(422, f"cannot read the disk of image {name}: {exc}") from exc
        self._disk_sizes[name] = (now(), size)
        return size

    async def root_gb(self, spec: VMSpec) -> int:
        """The size of a root disk of ``spec`` in whole GiB (its image's, rounded up, when
        it asks for none); 422 when a size asked for is smaller than its image's."""
        image_bytes = await self.disk_bytes(spec.image)
        if spec.disk_gb is None:
            return max(1, -(-image_bytes // catalog.GIB))
        if spec.disk_gb * catalog.GIB < image_bytes:
            raise RequestError(
                422,
                f"a root disk of {spec.disk_gb} GiB is smaller than image {spec.image}'s "
                f"({image_bytes / catalog.GIB:.2f} GiB); nothing was changed",
            )
        return spec.disk_gb

    async def guest(self, vm: VM) -> dict[str, Any]:
        """What a node needs to run ``vm``: its spec, its image's catalogue entry, what its
        node keeps with it (``meta``: :func:`~usher.ctrl.engine.adoption.meta_of`) and, if
        the image runs cloud-init, the guest's configuration (``config``, its NoCloud seed)."""
        try:
            found, image = await self._entry(vm.spec.image)
        except RequestError as exc:
            raise StepFailed(f"{vm.name}: {exc.message}") from exc
        guest = {
            "id": vm.id,
            "name": vm.name,
            "spec": vm.spec.model_dump(mode="json"),
            "image": image,
            "meta": meta_of(vm),
        }
        if found.cloud_init and self.seeds is not None:
            guest["config"] = await self.seeds.seed(vm)
        return guest

    async def _entry(self, name: str) -> tuple[Image, dict[str, Any]]:
        cached = self._entries.get(name)
        if cached is not None and now() - cached[0] < CACHE_SECONDS:
            return cached[1], cached[2]
        storage = self.storage_dir
        try:
            found = await asyncio.to_thread(catalog.read_manifest, storage, name)
        except catalog.ImageError as exc:
            raise RequestError(422, str(exc)) from exc
        if found is None:
            known = [i.name for i in await asyncio.to_thread(catalog.list_images, storage)]
            raise RequestError(
                404,
                f"unknown image {name!r} (known: {', '.join(known) or 'none'}); "
                "build one with `usher image build tiny|debian` or import one with "
                "`ush image import`",
            )
        as_sent = found.model_dump(mode="json")
        self._entries[name] = (now(), found, as_sent)
        return found, as_sent
