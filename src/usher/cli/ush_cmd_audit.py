"""``ush audit``: who asked for what, from where, and how it ended (the ``audit`` plugin).

This module does not import :mod:`usher.cli.ush` (``python -m usher.cli.ush`` would load it a
second time while it loads its extensions); it works with the shared session and renderer.
"""

from __future__ import annotations

import re
import time
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from usher.cli.ush_render import Renderer, fmt_time, fmt_value
from usher.cli.ush_session import Session

OUTPUT_KEY = "ush.output"  # where ush's -o option leaves the chosen format
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ("TIME", "USER", "OP", "VMS", "CLUSTER", "FROM", "OUTCOME", "REASON")


def parse_since(value: str) -> float:
    """Epoch seconds, or a duration ago like ``30s``, ``10m``, ``2h``, ``1d``."""
    if match := _AGO.match(value):
        return time.time() - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(
            "use epoch seconds or a duration ago like 30s, 10m, 2h, 1d"
        ) from None


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    return None if value is None else parse_since(value)


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
@click.option("--since", callback=_since, help="Epoch seconds, or ago: 30s, 10m, 2h, 1d.")
@click.option(
    "--outcome",
    type=click.Choice(["accepted", "succeeded", "failed", "vetoed", "refused", "dry_run"]),
    help="Only requests that ended so.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.pass_context
def audit(
    ctx: click.Context,
    user: str | None,
    vm: str | None,
    since: float | None,
    outcome: str | None,
    limit: int,
) -> None:
    """Show the audit log: who asked for what, on which VMs, from where, and how it ended."""
    session = ctx.find_object(Session)
    assert session is not None, "the ush group always sets a Session"
    out = Renderer(ctx.meta.get(OUTPUT_KEY) or session.output)
    params = {"user": user, "vm": vm, "since": since, "outcome": outcome, "limit": limit}
    answer = session.client.request("GET", "/audit", params=params)
    _show(out, answer["items"])


def register(group: click.Group) -> None:
    group.add_command(audit)
