"""``ush images`` and ``ush image import|show|rm``: the guest image catalogue."""

from __future__ import annotations

import os

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import UshGroup
from usher.cli.ush_names import complete_vm_names
from usher.cli.ush_options import wait_option
from usher.cli.ush_outcome import submitted
from usher.images.disk_formats import FORMATS


@click.command()
@pass_ush
def images(ush: Ush) -> None:
    """List the guest images of the catalogue."""
    ush.out.images(ush.client.images())


@click.group(cls=UshGroup)
def image() -> None:
    """Manage guest images: import, show, rm, from-vm."""


@image.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--description", default="", help="What the image is.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="auto",
    show_default=True,
    help="What the file is: a qcow2 or a raw disk (auto: the controller tells).",
)
@click.option("--replace", is_flag=True, help="Replace an image of that name no VM is based on.")
@click.option(
    "--cloud-init",
    is_flag=True,
    help="The image runs cloud-init (a cloud image): its VMs get accounts, keys and network.",
)
@pass_ush
def image_import(
    ush: Ush, path: str, name: str, description: str, fmt: str, replace: bool, cloud_init: bool
) -> None:
    """Upload a disk image (a qcow2 or a raw disk, e.g. a cloud image) into the catalogue."""
    with ush.out.upload(os.path.getsize(path)) as progress:
        found = ush.client.import_image(
            path, name, description, fmt, replace, progress, cloud_init=cloud_init
        )
    ush.out.image(found)


@image.command("show")
@click.argument("name")
@pass_ush
def image_show(ush: Ush, name: str) -> None:
    """Show one image."""
    ush.out.image(ush.client.image(name))


@image.command("rm")
@click.argument("name")
@pass_ush
def image_rm(ush: Ush, name: str) -> None:
    """Delete an image no VM uses."""
    ush.client.delete_image(name)
    ush.out.note(f"deleted image {name}")


@image.command("from-vm")
@click.argument("vm", shell_complete=complete_vm_names)
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--snapshot", help="From this snapshot of VM (VM may run); default: VM (stopped).")
@click.option("--description", default="", help="What the image is.")
@wait_option
@pass_ush
def image_from_vm(
    ush: Ush, vm: str, name: str, snapshot: str | None, description: str, wait: bool
) -> None:
    """Make a template: VM's root disk, flattened, as a new image (`ush create --image`)."""
    submitted(ush, ush.client.image_from_vm(vm, name, snapshot, description), wait)


COMMANDS: tuple[click.Command, ...] = (images, image)
