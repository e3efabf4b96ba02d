"""``ush snapshot create|list|revert|rm`` and ``ush clone``: snapshots of a VM's disks, and new
VMs from them (``ush image from-vm`` is with the image commands)."""

from __future__ import annotations

from typing import Any

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import UshGroup
from usher.cli.ush_names import complete_vm_names
from usher.cli.ush_options import kwarg_option, wait_option
from usher.cli.ush_outcome import submitted
from usher.cli.ush_render import fmt_time


@click.group(cls=UshGroup)
def snapshot() -> None:
    """Snapshots of a VM's disks: create, list, revert, rm."""


@snapshot.command("create")
@click.argument("vm", shell_complete=complete_vm_names)
@click.argument("name")
@kwarg_option
@wait_option
@pass_ush
def snapshot_create(ush: Ush, vm: str, name: str, kwargs: dict[str, Any], wait: bool) -> None:
    """Snapshot all of VM's disks as NAME (running, paused or stopped: a running guest's
    disks at one instant, as after a power cut)."""
    submitted(ush, ush.client.snapshot_create(vm, name, kwargs), wait)


@snapshot.command("list")
@click.argument("vm", shell_complete=complete_vm_names)
@pass_ush
def snapshot_list(ush: Ush, vm: str) -> None:
    """List VM's snapshots, oldest first, with the guest data each holds."""
    found = ush.client.snapshots(vm)
    if ush.out.json:
        ush.out.emit([snap.model_dump(mode="json") for snap in found])
        return
    ush.out.table(
        ("NAME", "CREATED", "SIZE", "TAKEN"),
        (
            (
                snap.name,
                fmt_time(snap.created_at),
                f"{snap.size_bytes / 2**20:.1f} MiB",
                "running" if snap.running else "stopped",
            )
            for snap in found
        ),
    )


@snapshot.command("revert")
@click.argument("vm", shell_complete=complete_vm_names)
@click.argument("name")
@wait_option
@pass_ush
def snapshot_revert(ush: Ush, vm: str, name: str, wait: bool) -> None:
    """Put the disks of VM (stopped: `ush stop` it first) back as snapshot NAME holds them."""
    submitted(ush, ush.client.snapshot_revert(vm, name), wait)


@snapshot.command("rm")
@click.argument("vm", shell_complete=complete_vm_names)
@click.argument("name")
@wait_option
@pass_ush
def snapshot_rm(ush: Ush, vm: str, name: str, wait: bool) -> None:
    """Delete snapshot NAME of VM."""
    submitted(ush, ush.client.snapshot_delete(vm, name), wait)


@click.command()
@click.argument("vm", shell_complete=complete_vm_names)
@click.option("--name", required=True, help="Name of the new VM.")
@click.option(
    "--snapshot", help="Copy this snapshot of VM (VM may run); default: VM's disks (stopped)."
)
@click.option("--node", help="Place the new VM on this node.")
@kwarg_option
@wait_option
@pass_ush
def clone(
    ush: Ush,
    vm: str,
    name: str,
    snapshot: str | None,
    node: str | None,
    kwargs: dict[str, Any],
    wait: bool,
) -> None:
    """Create a VM from a copy of VM's disks (or of one of its snapshots), and boot it: same
    size, image and cluster, its own NICs."""
    submitted(ush, ush.client.clone(vm, name, snapshot, node, kwargs), wait)


COMMANDS: tuple[click.Command, ...] = (snapshot, clone)
