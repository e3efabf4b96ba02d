"""``/v1/images``: the guest image catalogue, kept in the cluster's shared storage."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request

from usher.ctrl.api.deps import CtrlDep, PrincipalDep, allow
from usher.ctrl.engine import RequestError
from usher.images import catalog
from usher.model import Image

router = APIRouter(prefix="/v1/images", tags=["images"])
MAX_UPLOAD = 64 * 1024**3


@router.get("", response_model=list[Image])
async def list_images(ctrl: CtrlDep, principal: PrincipalDep) -> list[Image]:
    await allow(ctrl, principal, "image.list")
    return await asyncio.to_thread(catalog.list_images, ctrl.settings.storage_dir)


@router.get("/{name}", response_model=Image)
async def show_image(name: str, ctrl: CtrlDep, principal: PrincipalDep) -> Image:
    await allow(ctrl, principal, "image.show", image=name)
    return await ctrl.engine.image(name)


@router.post("/{name}", status_code=201, response_model=Image)
async def import_image(
    name: str, request: Request, ctrl: CtrlDep, principal: PrincipalDep, description: str = ""
) -> Image:
    """Import a qcow2 disk image sent as the request body (``application/octet-stream``)."""
    await allow(ctrl, principal, "image.import", image=name)
    storage = ctrl.settings.storage_dir
    (storage / "incoming").mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=storage / "incoming", suffix=".upload") as tmp:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise RequestError(413, f"image larger than {MAX_UPLOAD} bytes")
            await asyncio.to_thread(tmp.write, chunk)
        tmp.flush()
        if size == 0:
            raise RequestError(422, "empty upload: send the qcow2 file as the request body")
        try:
            image = await asyncio.to_thread(
                catalog.import_disk, storage, name, Path(tmp.name), description=description
            )
        except catalog.ImageError as exc:
            raise RequestError(409 if "exists" in str(exc) else 422, str(exc)) from exc
    await ctrl.bus.emit(
        "image_import",
        principal=principal.name,
        data={"name": name, "size_bytes": image.size_bytes},
    )
    return image


@router.delete("/{name}", status_code=204)
async def delete_image(name: str, ctrl: CtrlDep, principal: PrincipalDep) -> None:
    await allow(ctrl, principal, "image.delete", image=name)
    await ctrl.engine.image(name)
    users = await ctrl.store.count_vms(image=name)
    if users:
        raise RequestError(409, f"image {name!r} is used by {users} VM(s); destroy them first")
    try:
        await asyncio.to_thread(catalog.delete_image, ctrl.settings.storage_dir, name)
    except catalog.ImageError as exc:
        raise RequestError(409, str(exc)) from exc
    await ctrl.bus.emit("image_delete", principal=principal.name, data={"name": name})
