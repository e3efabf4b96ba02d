"""``ush ha …``: what the HA plugin protects, and protecting virtual clusters (``ha``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click
from rich.table import Table
from rich.text import Text

from usher.cli.ush import Ush, UshGroup, pass_ush
from usher.cli.ush_render import Renderer, fmt_time, fmt_value

COLUMNS = ("VM", "CLUSTER", "POLICY", "NODE", "STATE", "LAST RESTART")


def _restart(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    return f"{fmt_time(last['at'])} {last['from']}→{last['to']} in {last['seconds']:.2f} s"


def _show(out: Renderer, status: dict[str, Any]) -> None:
    if out.json:
        out.emit(status)
        return
    out.console.print(Text(f"protected clusters: {fmt_value(status['clusters'])}"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in COLUMNS:
        table.add_column(column)
    for vm in status["vms"]:
        values = (vm["name"], vm["cluster"], vm["policy"], vm["node"], vm["state"])
        table.add_row(*(Text(fmt_value(v)) for v in values), Text(_restart(vm["last_restart"])))
    out.console.print(table)


@click.group(cls=UshGroup)
def ha() -> None:
    """High availability: VMs restarted elsewhere when their node is lost."""


@ha.command("status")
@pass_ush
def status(ush: Ush) -> None:
    """Show the protected clusters and VMs: node, state, last restart."""
    _show(ush.out, ush.client.request("GET", "/ha"))


@ha.command("protect")
@click.option("--cluster", required=True, help="The virtual cluster to protect.")
@pass_ush
def protect(ush: Ush, cluster: str) -> None:
    """Restart the VMs of a virtual cluster elsewhere when their node is lost."""
    _show(ush.out, ush.client.request("PUT", f"/ha/clusters/{quote(cluster, safe='')}"))


@ha.command("unprotect")
@click.option("--cluster", required=True, help="The virtual cluster to stop protecting.")
@pass_ush
def unprotect(ush: Ush, cluster: str) -> None:
    """Stop protecting a virtual cluster (VMs started with ha=true stay protected)."""
    _show(ush.out, ush.client.request("DELETE", f"/ha/clusters/{quote(cluster, safe='')}"))


def register(group: click.Group) -> None:
    group.add_command(ha)
