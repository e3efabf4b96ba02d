"""``usher image``: build, import, list and remove guest images in the shared storage dir."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from usher.cli.local_cluster import running_local
from usher.images.catalog import ImageError, delete_image, import_disk, list_images, read_manifest
from usher.images.debian import build_debian
from usher.images.tiny import build_tiny

DEFAULT_STORAGE = "/var/lib/usher/storage"


def default_storage() -> str:
    """The site's storage dir, or the one of the cluster ``usher local`` runs if the site
    has none."""
    local = running_local()
    if local is not None and not Path(DEFAULT_STORAGE).is_dir():
        return str(local.storage)
    return DEFAULT_STORAGE


def storage_option() -> click.Option:
    return click.Option(
        ["--storage-dir"],
        envvar="USHER_STORAGE",
        default=default_storage,
        show_default=f"{DEFAULT_STORAGE}, or usher local's",
        type=click.Path(file_okay=False, path_type=Path),
        help="Storage directory shared by the cluster's LNMs (env USHER_STORAGE).",
    )


class ImageGroup(click.Group):
    """Adds ``--storage-dir`` to every subcommand and shows :class:`ImageError` as a message."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(storage_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ImageError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=ImageGroup)
def image() -> None:
    """Guest images: the catalogue in the storage directory every LNM shares."""


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@image.command()
@click.argument("kind", type=click.Choice(["tiny", "debian"]))
@click.option("--force", is_flag=True, help="Rebuild even if the image exists.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where downloaded packages are cached [~/.cache/usher/debs, or ~/.cache/usher/debian].",
)
def build(kind: str, force: bool, work_dir: Path | None, storage_dir: Path) -> None:
    """Build a standard image: KIND ``tiny`` is the small busybox test guest, ``debian`` a
    Debian 12 guest with cloud-init, SSH and a serial login (needs root and mmdebstrap)."""
    err = Console(stderr=True, soft_wrap=True)
    existing = read_manifest(storage_dir, kind)
    if existing is not None and not force:
        err.print(f"image {kind} exists: {existing.description} (--force rebuilds it)")
        return
    started = time.monotonic()
    with err.status(f"building image {kind}") as status:

        def progress(step: str) -> None:
            err.print(f"  {step}")
            status.update(step)

        builder = build_debian if kind == "debian" else build_tiny
        built = builder(storage_dir, work_dir=work_dir, force=force, progress=progress)
    err.print(
        f"[green]image {built.name}[/]: {built.description}, {_size(built.size_bytes)} "
        f"({time.monotonic() - started:.1f} s)"
    )


@image.command(name="list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def list_(output: str, storage_dir: Path) -> None:
    """List the images in the catalogue."""
    images = list_images(storage_dir)
    if output == "json":
        click.echo(json.dumps([item.model_dump(mode="json") for item in images], indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("NAME", "KIND", "SIZE", "CREATED", "DESCRIPTION"):
        table.add_column(column)
    for item in images:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.created_at))
        table.add_row(item.name, item.kind.value, _size(item.size_bytes), created, item.description)
    Console().print(table)


@image.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--description", default="", help="One line about the image.")
@click.option("--replace", is_flag=True, help="Replace an existing image of that name.")
def import_(file: Path, name: str, description: str, replace: bool, storage_dir: Path) -> None:
    """Import FILE, a bootable qcow2 disk, as image NAME."""
    with Console(stderr=True).status(f"importing {file}"):
        imported = import_disk(storage_dir, name, file, description, replace=replace)
    click.echo(f"image {imported.name}: {_size(imported.size_bytes)}", err=True)


@image.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove even if VM disks are based on it.")
def rm(name: str, force: bool, storage_dir: Path) -> None:
    """Remove image NAME from the catalogue."""
    if not delete_image(storage_dir, name, force=force):
        raise click.ClickException(f"no image {name} in {storage_dir}")
    click.echo(f"removed image {name}", err=True)
