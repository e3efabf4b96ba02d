"""``ush resize``: a VM's vCPUs and memory (stopped) and its disks, which only grow."""

from __future__ import annotations

import re
from typing import Any

import click

from usher.bounds import MAX_DATA_DISKS, BoundsError, parse_gib
from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_names import complete_vm_names
from usher.cli.ush_options import kwarg_option, wait_option
from usher.cli.ush_outcome import submitted
from usher.model import MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB

_GROWTH = re.compile(r"(?:(\d{1,3}):)?\+(.+)", re.ASCII)


def parse_growth(text: str) -> tuple[int, int]:
    """``+SIZE`` (the root disk grows by SIZE) or ``N:+SIZE`` (data disk N does): the disk
    (0 for the root) and the GiB it gains."""
    found = _GROWTH.fullmatch(text.strip())
    if found is None:
        raise BoundsError(
            f"{text!r}: write +SIZE to grow the root disk or N:+SIZE to grow data disk N "
            "(e.g. +1G, 2:+10G); disks only grow"
        )
    disk = int(found.group(1) or 0)
    if disk > MAX_DATA_DISKS:
        raise BoundsError(f"{text!r}: there is no disk {disk} (a VM has at most {MAX_DATA_DISKS})")
    return disk, parse_gib(found.group(2), "disk growth")


def _growths(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[int, int]:
    grow: dict[int, int] = {}
    for value in values:
        try:
            disk, gib = parse_growth(value)
        except BoundsError as exc:
            raise click.BadParameter(str(exc)) from None
        if disk in grow:
            raise click.BadParameter(f"disk {disk} is named twice: name each disk once")
        grow[disk] = gib
    return grow


@click.command()
@click.argument("vm", shell_complete=complete_vm_names)
@click.option("--vcpus", type=click.IntRange(1, MAX_VCPUS), help="vCPUs (the VM stopped).")
@click.option(
    "--memory",
    "memory_mb",
    type=click.IntRange(MIN_MEMORY_MB, MAX_MEMORY_MB),
    help="Memory in MiB (the VM stopped).",
)
@click.option(
    "--disk",
    "grow",
    metavar="[N:]+SIZE",
    multiple=True,
    callback=_growths,
    help="Grow the root disk (+1G) or data disk N (2:+10G) by SIZE, stopped or running; "
    "repeatable. The guest grows its partitions and file systems itself.",
)
@kwarg_option
@wait_option
@pass_ush
def resize(
    ush: Ush,
    vm: str,
    vcpus: int | None,
    memory_mb: int | None,
    grow: dict[int, int],
    kwargs: dict[str, Any],
    wait: bool,
) -> None:
    """Give VM other vCPUs or memory (while it is stopped) and grow its disks (also while
    it runs), re-checked against its node's room and the quotas."""
    if vcpus is None and memory_mb is None and not grow:
        raise click.UsageError("say what to resize: --vcpus, --memory and/or --disk")
    submitted(ush, ush.client.resize_vm(vm, vcpus, memory_mb, grow, kwargs), wait)


COMMANDS = [resize]
