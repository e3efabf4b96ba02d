"""``ush audit``: who asked for what, from where, and how it ended (the ``audit`` plugin)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from usher.cli.ush import Ush, _parse_since, pass_ush
from usher.cli.ush_render import Renderer, fmt_time, fmt_value

COLUMNS = ("TIME", "USER", "OP", "VMS", "CLUSTER", "FROM", "OUTCOME", "REASON")


def _show(out: Renderer, items: list[dict[str, Any]]) -> None:
    if out.json:
        out.emit(items)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in COLUMNS:
        table.add_column(column)
    for item in items:
        outcome = item["outcome"]
        if item["total"] and outcome in ("succeeded", "failed"):
            outcome += f" ({item['done']}/{item['total']})"
        values = (
            fmt_time(item["time"]),
            item["principal"],
            item["kind"],
            item["vm_names"] or item["vms"],
            item["cluster"],
            item["client_address"],
            outcome,
            item["reason"],
        )
        table.add_row(*(Text(fmt_value(v)) for v in values))
    out.console.print(table)


@click.command()
@click.option("--user", help="Only requests of this principal.")
@click.option("--vm", help="Only requests on this VM (id or name).")
@click.option("--since", callback=_parse_since, help="Epoch seconds, or ago: 30s, 10m, 2h, 1d.")
@click.option(
    "--outcome",
    type=click.Choice(["accepted", "succeeded", "failed", "vetoed", "refused", "dry_run"]),
    help="Only requests that ended so.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@pass_ush
def audit(
    ush: Ush,
    user: str | None,
    vm: str | None,
    since: float | None,
    outcome: str | None,
    limit: int,
) -> None:
    """Show the audit log: who asked for what, on which VMs, from where, and how it ended."""
    params = {"user": user, "vm": vm, "since": since, "outcome": outcome, "limit": limit}
    _show(ush.out, ush.client.request("GET", "/audit", params=params)["items"])


def register(group: click.Group) -> None:
    group.add_command(audit)
