"""``/v1/images``: the guest image catalogue, kept in the cluster's shared storage."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from usher.bounds import MAX_TEXT
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
    name: str,
    request: Request,
    ctrl: CtrlDep,
    principal: PrincipalDep,
    description: Annotated[str, Query(max_length=MAX_TEXT)] = "",
    format: Annotated[Literal["auto", "qcow2", "raw"], Query()] = "auto",
    replace: bool = False,
    cloud_init: bool = False,
) -> Image:
    """Import a disk image sent as the request body (``application/octet-stream``): a qcow2
    or a raw disk (made qcow2), as ``format`` says (``auto``: told from its first bytes).
    ``replace`` swaps out an image of that name that no VM's disk is based on; ``cloud_init``
    says the image runs cloud-init (its VMs get a NoCloud seed: accounts, keys, network)."""
    await allow(ctrl, principal, "image.import", image=name)
    if replace:  # what it replaces is deleted
        await allow(ctrl, principal, "image.delete", image=name)
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
            raise RequestError(422, "empty upload: send the disk image as the request body")
        try:
            image = await asyncio.to_thread(
                catalog.import_disk,
                storage,
                name,
                Path(tmp.name),
                description=description,
                replace=replace,
                fmt=format,
                shown_as=f"the upload for image {name}",
                cloud_init=cloud_init,
            )
        except catalog.ImageError as exc:
            conflict = "exists" in str(exc) or "is the base of" in str(exc)
            raise RequestError(409 if conflict else 422, str(exc)) from exc
    ctrl.engine.images.forget(name)
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
    ctrl.engine.images.forget(name)
    await ctrl.bus.emit("image_delete", principal=principal.name, data={"name": name})
