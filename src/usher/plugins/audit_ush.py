"""``ush audit``: who asked for what, from where, and how it ended (the ``audit`` plugin)."""

from __future__ import annotations

from typing import Any

import click

from usher.cli.api import Renderer, Ush, fmt_time, parse_since, pass_ush

COLUMNS = ("TIME", "USER", "OP", "VMS", "CLUSTER", "FROM", "OUTCOME", "REASON")


def _row(item: dict[str, Any]) -> tuple[Any, ...]:
    outcome = item["outcome"]
    if item["total"] and outcome in ("succeeded", "failed"):
        outcome += f" ({item['done']}/{item['total']})"
    return (
        fmt_time(item["time"]),
        item["principal"],
        item["kind"],
        item["vm_names"] or item["vms"],
        item["cluster"],
        item["client_address"],
        outcome,
        item["reason"],
    )


def _show(out: Renderer, items: list[dict[str, Any]]) -> None:
    if out.json:
        out.emit(items)
    else:
        out.table(COLUMNS, [_row(item) for item in items])


@click.command()
@click.option("--user", help="Only requests of this principal.")
@click.option("--vm", help="Only requests on this VM (id or name).")
@click.option("--since", callback=parse_since, help="Epoch seconds, or ago: 30s, 10m, 2h, 1d.")
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
