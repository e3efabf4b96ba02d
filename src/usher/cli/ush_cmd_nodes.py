"""``ush nodes``, ``ush node NAME``, ``drain``/``undrain``, and host maintenance.

``ush node NAME`` shows a node: the ``node`` group runs its ``show`` subcommand when the first
word is not one of its own (``evacuate``, ``maintenance``, ``activate``).
"""

from __future__ import annotations

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import UshGroup
from usher.cli.ush_names import complete_node_names
from usher.cli.ush_options import wait_option
from usher.cli.ush_outcome import submitted


class NodeGroup(UshGroup):
    """``ush node NAME`` is ``ush node show NAME``; ``ush node ACTION NAME`` runs ACTION."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@click.command()
@pass_ush
def nodes(ush: Ush) -> None:
    """List the nodes."""
    ush.out.nodes(ush.client.nodes())


@click.group("node", cls=NodeGroup)
def node() -> None:
    """Show a node (``ush node NAME``), or evacuate it, put it in maintenance, activate it."""


@node.command("show")
@click.argument("name", shell_complete=complete_node_names)
@pass_ush
def show(ush: Ush, name: str) -> None:
    """Show one node."""
    ush.out.node(ush.client.node(name))


@node.command()
@click.argument("name", shell_complete=complete_node_names)
@wait_option
@pass_ush
def evacuate(ush: Ush, name: str, wait: bool) -> None:
    """Move every VM off node NAME: running ones live, stopped ones cold."""
    submitted(ush, ush.client.evacuate(name), wait)


@node.command()
@click.argument("name", shell_complete=complete_node_names)
@wait_option
@pass_ush
def maintenance(ush: Ush, name: str, wait: bool) -> None:
    """Put node NAME in maintenance (no new VMs) and evacuate it."""
    submitted(ush, ush.client.maintenance(name), wait)


@node.command()
@click.argument("name", shell_complete=complete_node_names)
@pass_ush
def activate(ush: Ush, name: str) -> None:
    """Return node NAME from maintenance: new VMs may go there again."""
    ush.out.node(ush.client.activate(name))


@click.command()
@click.argument("name", shell_complete=complete_node_names)
@pass_ush
def drain(ush: Ush, name: str) -> None:
    """Place no new VMs on a node."""
    ush.out.node(ush.client.drain(name))


@click.command()
@click.argument("name", shell_complete=complete_node_names)
@pass_ush
def undrain(ush: Ush, name: str) -> None:
    """Let the scheduler place VMs on a node again."""
    ush.out.node(ush.client.undrain(name))


COMMANDS: tuple[click.Command, ...] = (nodes, node, drain, undrain)
