"""``ush ha status|protect|unprotect``: what the ``ha`` plugin protects, and protecting clusters."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import click

from usher.cli.api import Renderer, Ush, UshGroup, fmt_time, fmt_value, pass_ush

COLUMNS = ("VM", "CLUSTER", "POLICY", "NODE", "STATE", "LAST RESTART")


def _restart(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    return f"{fmt_time(last['at'])} {last['from']}→{last['to']} in {last['seconds']:.2f} s"


def _show(out: Renderer, status: dict[str, Any]) -> None:
    if out.json:
        out.emit(status)
        return
    out.line(f"protected clusters: {fmt_value(status['clusters'])}")
    rows = [
        (
            vm["name"],
            vm["cluster"],
            vm["policy"],
            vm["node"],
            vm["state"],
            _restart(vm["last_restart"]),
        )
        for vm in status["vms"]
    ]
    out.table(COLUMNS, rows)


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
