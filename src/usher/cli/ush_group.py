"""The ``ush`` command group: ``-o/--output`` on every command, API errors as one line."""

from __future__ import annotations

from typing import Any

import click

from usher.client import UsherError

OUTPUT_KEY = "ush.output"


class Failure(click.ClickException):
    """An API error, shown as ``error: <message>``."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _store_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[OUTPUT_KEY] = value


def output_option() -> click.Option:
    """``-o/--output``, accepted before the command and after it."""
    return click.Option(
        ["-o", "--output"],
        type=click.Choice(["table", "json"]),
        expose_value=False,
        callback=_store_output,
        help="table, or json: machine-readable, and nothing else on stdout.",
    )


class UshGroup(click.Group):
    """Adds ``-o`` to every command and turns API errors into :class:`Failure`."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(param.name == "output" for param in cmd.params):  # (added once, however
            cmd.params.append(output_option())  # often the command is: ``python -m`` twice)
        super().add_command(cmd, name)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugin_commands: dict[str, str] = {}
        """Commands that plugins added (by entry point): the controller plugin each one
        needs, to say so when the controller does not serve it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsherError as exc:
            raise Failure(_explained(ctx, exc)) from None


def _explained(ctx: click.Context, exc: UsherError) -> str:
    """An API error's message; a route the controller does not have, behind a plugin's
    command, names the plugin to enable."""
    root = ctx.find_root()
    command = root.invoked_subcommand if ctx is root else _below_root(ctx).info_name
    plugins = getattr(root.command, "plugin_commands", {})
    if exc.status != 404 or exc.message != "Not Found" or command not in plugins:
        return exc.message
    return (
        f"the controller does not serve `ush {command}`: enable its plugin "
        f"{plugins[command]!r} (add it to `enabled` under [plugins] in the controller's "
        "config, then restart the controller)"
    )


def _below_root(ctx: click.Context) -> click.Context:
    while ctx.parent is not None and ctx.parent.parent is not None:
        ctx = ctx.parent
    return ctx
