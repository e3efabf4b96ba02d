"""``ush cluster create|show|add-member|remove-member``: who administers a virtual cluster and who
may use it (the ``authz`` plugin)."""

from __future__ import annotations

from urllib.parse import quote

import click

from usher.cli.api import Ush, UshGroup, pass_ush


@click.group(cls=UshGroup)
def cluster() -> None:
    """Virtual clusters: their administrator and members."""


def _path(name: str, *rest: str) -> str:
    return "/".join(["/clusters", quote(name, safe=""), *(quote(r, safe="") for r in rest)])


@cluster.command("create")
@click.argument("name")
@pass_ush
def create(ush: Ush, name: str) -> None:
    """Make virtual cluster NAME, administered by you, before its first VM."""
    ush.out.mapping(ush.client.request("PUT", _path(name)))


@cluster.command("show")
@click.argument("name")
@pass_ush
def show(ush: Ush, name: str) -> None:
    """Show a virtual cluster's administrator and members."""
    ush.out.mapping(ush.client.request("GET", _path(name)))


@cluster.command("add-member")
@click.argument("name")
@click.argument("user")
@pass_ush
def add_member(ush: Ush, name: str, user: str) -> None:
    """Let USER see and act on the VMs of cluster NAME."""
    ush.out.mapping(ush.client.request("PUT", _path(name, "members", user)))


@cluster.command("remove-member")
@click.argument("name")
@click.argument("user")
@pass_ush
def remove_member(ush: Ush, name: str, user: str) -> None:
    """Take USER's access to cluster NAME away."""
    ush.out.mapping(ush.client.request("DELETE", _path(name, "members", user)))
