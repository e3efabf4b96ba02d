"""A VM's definition: ``ush config`` (the command that makes it again), ``ush rename`` and
``ush tag``."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import UshGroup
from usher.cli.ush_names import complete_vm_names


@click.command("config")
@click.argument("vm", shell_complete=complete_vm_names)
@pass_ush
def config_of(ush: Ush, vm: str) -> None:
    """A VM's definition: the `ush create` command that makes it again (-o json: as data)."""
    found = ush.client.get_vm(vm)
    spec = found.spec
    definition = {
        "names": [found.name],
        "cluster": found.cluster,
        "vcpus": spec.vcpus,
        "memory_mb": spec.memory_mb,
        "image": spec.image,
        "disk_gb": spec.disk_gb,
        "disks": spec.disks,
        "tags": found.tags,
        "kwargs": spec.kwargs,
    }
    if ush.out.json:
        ush.out.emit(definition)
        return
    words = ["ush", "create", "--names", found.name]
    if found.cluster:
        words += ["--cluster", found.cluster]
    words += ["--vcpus", str(spec.vcpus), "--memory", str(spec.memory_mb), "--image", spec.image]
    if spec.disk_gb is not None:
        words += ["--disk-size", f"{spec.disk_gb}G"]
    for disk in spec.disks:
        words += ["--disk", f"{disk['size_gb']}G"]
    for tag in found.tags:
        words += ["--tag", tag]
    for key, value in spec.kwargs.items():
        words += ["--kwarg", f"{key}={json.dumps(value)}"]
    ush.out.line(shlex.join(words))


@click.command()
@click.argument("vm", shell_complete=complete_vm_names)
@click.argument("new_name")
@pass_ush
def rename(ush: Ush, vm: str, new_name: str) -> None:
    """Give VM (id or name) the name NEW_NAME (its id, and the guest, stay as they are)."""
    ush.out.vm(ush.client.change_vm(vm, name=new_name))


@click.group(cls=UshGroup)
def tag() -> None:
    """A VM's tags: add, rm, set (ush list --tag T lists the VMs that have one)."""


def _tag_command(name: str, summary: str, change: Callable[[list[str]], dict[str, Any]]) -> None:
    @tag.command(name, help=f"{summary} (VM: an id or a name).")
    @click.argument("vm", shell_complete=complete_vm_names)
    @click.argument("tags", nargs=-1, required=name != "set")
    @pass_ush
    def command(ush: Ush, vm: str, tags: tuple[str, ...]) -> None:
        ush.out.vm(ush.client.change_vm(vm, **change(list(tags))))


_tag_command("add", "Add TAGS to VM", lambda tags: {"add_tags": tags})
_tag_command("rm", "Take TAGS off VM", lambda tags: {"remove_tags": tags})
_tag_command("set", "Make TAGS the VM's only tags (none: no tags)", lambda tags: {"tags": tags})


COMMANDS: tuple[click.Command, ...] = (config_of, rename, tag)
