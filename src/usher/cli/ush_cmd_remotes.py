"""``ush remote``: the controllers ush knows by name (``~/.usher/config.toml``)."""

from __future__ import annotations

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import UshGroup
from usher.client.config import add_remote, read_config, remove_remote, use_remote


@click.group(cls=UshGroup)
def remote() -> None:
    """Controllers by name: add, list, use, rm (--remote NAME picks one for a command)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--token", help="Its API token (or `ush login` once it is in use).")
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, resolve_path=True),
    help="Its CA (PEM).",
)
@click.option("--use", is_flag=True, help="Use it from now on (as the first remote is).")
@pass_ush
def add(ush: Ush, name: str, url: str, token: str | None, ca_file: str | None, use: bool) -> None:
    """Add (or replace) controller NAME at URL."""
    path = add_remote(name, {"url": url, "token": token, "ca_file": ca_file}, use=use)
    ush.out.note(f"remote {name} ({url}) is in {path}")


@remote.command("list")
@pass_ush
def list_remotes(ush: Ush) -> None:
    """The remotes; * marks the one in use."""
    config = read_config()
    rows = [
        {
            "name": name,
            "url": settings.get("url"),
            "in_use": name == config.current,
            "token": bool(settings.get("token")),
            "ca_file": settings.get("ca_file"),
        }
        for name, settings in sorted(config.remotes.items())
    ]
    if ush.out.json:
        ush.out.emit(rows)
        return
    ush.out.table(
        ("", "NAME", "URL", "TOKEN", "CA FILE"),
        [
            (
                "*" if r["in_use"] else "",
                r["name"],
                r["url"],
                "yes" if r["token"] else "no",
                r["ca_file"],
            )
            for r in rows
        ],
    )


@remote.command("use")
@click.argument("name")
@pass_ush
def use(ush: Ush, name: str) -> None:
    """Use controller NAME from now on."""
    use_remote(name)
    ush.out.note(f"ush now uses remote {name}")


@remote.command("rm")
@click.argument("name")
@pass_ush
def rm(ush: Ush, name: str) -> None:
    """Forget controller NAME (and its token)."""
    remove_remote(name)
    ush.out.note(f"remote {name} is forgotten")


COMMANDS: tuple[click.Command, ...] = (remote,)
