"""The image catalogue as the engine reads it: briefly cached, and as a node is sent it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from usher.ctrl.engine.errors import RequestError, StepFailed
from usher.ctrl.engine.guest_seeds import GuestSeeds
from usher.images import catalog
from usher.model import VM, Image, now

CACHE_SECONDS = 5.0


class ImageCache:
    def __init__(self, storage_dir: Path, seeds: GuestSeeds | None = None) -> None:
        self.storage_dir = storage_dir
        self.seeds = seeds
        self._entries: dict[str, tuple[float, Image, dict[str, Any]]] = {}

    async def image(self, name: str) -> Image:
        """The catalogue entry of image ``name``; RequestError 404 if there is none."""
        return (await self._entry(name))[0]

    def forget(self, name: str) -> None:
        """Read image ``name`` afresh next time (it was imported, replaced or deleted)."""
        self._entries.pop(name, None)

    async def guest(self, vm: VM) -> dict[str, Any]:
        """What a node needs to run ``vm``: its spec, its image's catalogue entry and, if the
        image runs cloud-init, the guest's configuration (``config``, its NoCloud seed)."""
        try:
            found, image = await self._entry(vm.spec.image)
        except RequestError as exc:
            raise StepFailed(f"{vm.name}: {exc.message}") from exc
        guest = {
            "id": vm.id,
            "name": vm.name,
            "spec": vm.spec.model_dump(mode="json"),
            "image": image,
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
                "build one with `usher image build tiny` or import one with `ush image import`",
            )
        as_sent = found.model_dump(mode="json")
        self._entries[name] = (now(), found, as_sent)
        return found, as_sent
