"""``ush vmcap counts``: the example plugin's event counts, from its route ``/v1/vmcap/counts``.

A plugin's ``ush`` commands use only :mod:`usher.cli.api`; the entry point in group
``usher.ush_commands`` (see ``pyproject.toml``) adds them to ``ush``.
"""

from __future__ import annotations

import click

from usher.cli.api import Ush, UshGroup, pass_ush


@click.group(cls=UshGroup)
def vmcap() -> None:
    """The vmcap example plugin: how many events it has seen."""


@vmcap.command()
@pass_ush
def counts(ush: Ush) -> None:
    """Show how many events of each name the plugin has seen, most first."""
    seen: dict[str, int] = ush.client.request("GET", "/vmcap/counts")
    if ush.out.json:
        ush.out.emit(seen)
        return
    ranked = sorted(seen.items(), key=lambda item: (-item[1], item[0]))
    ush.out.table(("EVENT", "COUNT"), ranked)
