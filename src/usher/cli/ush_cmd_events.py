"""``ush events``: what happened, recorded or as it happens."""

from __future__ import annotations

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_options import parse_since


@click.command()
@click.option("--name", help="Only events with this name (e.g. stop_failure).")
@click.option("--vm", help="Only events about this VM.")
@click.option("--node", help="Only events about this node.")
@click.option("--operation", help="Only events of this operation.")
@click.option("--since", callback=parse_since, help="Epoch seconds, or ago: 30s, 10m, 2h, 1d.")
@click.option("-f", "--follow", is_flag=True, help="Stream new events until Ctrl-C.")
@click.option("--tail", type=click.IntRange(1, 1000), help="Only the last N events.")
@pass_ush
def events(
    ush: Ush,
    name: str | None,
    vm: str | None,
    node: str | None,
    operation: str | None,
    since: float | None,
    follow: bool,
    tail: int | None,
) -> None:
    """Show recorded events, oldest first, or follow new ones as they happen."""
    if tail is not None and follow:
        raise click.UsageError("--tail shows recorded events; --follow the ones to come")
    if tail is not None:
        latest = ush.client.events(name, vm, node, operation, since, limit=tail, newest=True)
        ush.out.events(reversed(latest.items))
        return
    if not follow:
        ush.out.events(ush.client.iter_events(name, vm, node, operation, since))
        return
    if operation or since is not None:
        raise click.UsageError("--follow filters by --name, --vm and --node only")
    try:
        for event in ush.client.stream_events(name, vm, node):
            ush.out.event(event)
    except KeyboardInterrupt:
        return


COMMANDS: tuple[click.Command, ...] = (events,)
