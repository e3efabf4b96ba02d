"""Commands that installed packages add to ``ush``, by entry point.

Each entry point of group ``usher.ush_commands`` names a click command or group; its name is
the command's name in ``ush``. One that does not load, is no click command, or takes a name
``ush`` already has (a core command keeps it) is left out with a one-line warning on stderr:
``ush`` itself goes on working.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

from usher.cli.ush_group import UshGroup

ENTRY_POINT_GROUP = "usher.ush_commands"


def _warn(entry: EntryPoint, why: str) -> None:
    package = f"package {entry.dist.name}, " if entry.dist else ""
    click.echo(
        f"ush: warning: left out command {entry.name!r} ({package}{entry.value}, entry point "
        f"of {ENTRY_POINT_GROUP}): {why}",
        err=True,
    )


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def add_plugin_commands(group: click.Group) -> None:
    """Add every installed entry point's command to ``group``; calling it again adds none."""
    core = set(group.commands)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            command = entry.load()
        except Exception as exc:  # whatever a broken package raises, ush goes on
            _warn(entry, f"it does not load: {_first_line(exc)}")
            continue
        if not isinstance(command, click.Command):
            _warn(entry, f"{type(command).__name__} is not a click command or group")
            continue
        present = group.commands.get(entry.name)
        if present is command:
            continue
        if present is not None:
            owner = "a core command" if entry.name in core else "another entry point's command"
            _warn(entry, f"{owner} has that name")
            continue
        group.add_command(command, entry.name)
        if isinstance(group, UshGroup):
            group.plugin_commands[entry.name] = _plugin_of(entry)


def _plugin_of(command: EntryPoint) -> str:
    """The controller plugin a command's routes come from: the ``usher.plugins`` entry point
    whose module the command's module names without ``_ush`` (``usher.plugins.audit_ush`` →
    ``usher.plugins.audit``), else the command's own name."""
    module = command.module.removesuffix("_ush")
    for plugin in entry_points(group="usher.plugins"):
        if plugin.module == module:
            return plugin.name
    return command.name
