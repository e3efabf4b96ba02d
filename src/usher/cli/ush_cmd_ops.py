"""``ush cancel OP`` and ``ush node evacuate|maintenance|activate NODE`` (host maintenance).

``ush node NAME`` still shows a node: the ``node`` group runs its ``show`` subcommand (the
``ush node`` command of :mod:`usher.cli.ush`) when the first word is not one of its own.
"""

from __future__ import annotations

import click

from usher.cli.ush import Ush, UshGroup, _submitted, _wait_option, pass_ush


class NodeGroup(UshGroup):
    """``ush node NAME`` is ``ush node show NAME``; ``ush node ACTION NAME`` runs ACTION."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.group("node", cls=NodeGroup)
def node() -> None:
    """Show a node (``ush node NAME``), or evacuate it, put it in maintenance, activate it."""


@node.command()
@click.argument("name")
@_wait_option
@pass_ush
def evacuate(ush: Ush, name: str, wait: bool) -> None:
    """Move every VM off node NAME: running ones live, stopped ones cold."""
    _submitted(ush, ush.client.evacuate(name), wait)


@node.command()
@click.argument("name")
@_wait_option
@pass_ush
def maintenance(ush: Ush, name: str, wait: bool) -> None:
    """Put node NAME in maintenance (no new VMs) and evacuate it."""
    _submitted(ush, ush.client.maintenance(name), wait)


@node.command()
@click.argument("name")
@pass_ush
def activate(ush: Ush, name: str) -> None:
    """Return node NAME from maintenance: new VMs may go there again."""
    ush.out.node(ush.client.activate(name))


@click.command()
@click.argument("op")
@pass_ush
def cancel(ush: Ush, op: str) -> None:
    """Cancel operation OP: steps not yet begun never run, running migrations are called off;
    other running steps go on (ush says why)."""
    answer = ush.client.cancel(op)
    for vm_id, why in answer.result.get("cancel", {}).get("refused", {}).items():
        ush.out.note(f"{vm_id}: {why}")
    ush.out.submitted(answer)


def register(group: click.Group) -> None:
    show = group.commands.get("node")
    if show is not None and "show" not in node.commands:
        node.add_command(show, "show")
    group.add_command(node)
    group.add_command(cancel)
