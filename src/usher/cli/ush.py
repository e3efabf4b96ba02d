"""``ush``, the Usher shell: one-shot commands (``ush start -n 4``) and, alone, a shell.

Exit codes: 0 success, 1 an API error or an operation that failed or was vetoed, 2 a usage
error. API errors print ``error: <message>`` on stderr.

The core's commands live in the ``usher.cli.ush_cmd_*`` modules, one concept each; commands
of plugins come from installed packages through the entry-point group ``usher.ush_commands``
(:mod:`usher.cli.ush_plugin_commands`) and use only :mod:`usher.cli.api`.
"""

from __future__ import annotations

import sys

import click

from usher.cli import (
    ush_cmd_completion,
    ush_cmd_definitions,
    ush_cmd_events,
    ush_cmd_images,
    ush_cmd_login,
    ush_cmd_nodes,
    ush_cmd_ops,
    ush_cmd_remotes,
    ush_cmd_resize,
    ush_cmd_snapshots,
    ush_cmd_ssh,
    ush_cmd_vms,
)
from usher.cli.ush_group import OUTPUT_KEY, UshGroup, output_option
from usher.cli.ush_launcher import command_named
from usher.cli.ush_plugin_commands import add_plugin_commands
from usher.cli.ush_session import Session


@click.group(cls=UshGroup, invoke_without_command=True, params=[output_option()])
@click.option("--url", help="Controller URL [env USHER_URL, ~/.usher/config.toml].")
@click.option("--token", help="API token [env USHER_TOKEN, ~/.usher/config.toml].")
@click.option(
    "--remote",
    envvar="USHER_REMOTE",
    help="The controller to use, by its name in ~/.usher/config.toml (ush remote list).",
)
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, remote: str | None) -> None:
    """The Usher shell: start, list and control VMs on an Usher controller.

    Without a command, ush starts an interactive shell.
    """
    if not isinstance(ctx.obj, Session) or url or token or remote:
        base = ctx.obj if isinstance(ctx.obj, Session) else Session()
        ctx.obj = base.derive(url, token, remote)
        ctx.call_on_close(ctx.obj.close)
    if ctx.invoked_subcommand is not None:
        return
    if ctx.obj.interactive:
        click.echo(ctx.get_help())
        return
    ctx.obj.interactive = True
    ctx.obj.output = ctx.meta.get(OUTPUT_KEY, ctx.obj.output)
    from usher.cli.ush_shell import Shell  # prompt_toolkit: only for the shell

    Shell(cli, ctx.obj).run()


CORE_COMMAND_MODULES = (
    ush_cmd_vms,
    ush_cmd_definitions,
    ush_cmd_nodes,
    ush_cmd_ops,
    ush_cmd_events,
    ush_cmd_images,
    ush_cmd_login,
    ush_cmd_remotes,
    ush_cmd_ssh,
    ush_cmd_snapshots,
    ush_cmd_resize,
    ush_cmd_completion,
)
for _module in CORE_COMMAND_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    # a core command needs no plugin's: their packages (an example plugin imports FastAPI)
    # load only for the shell, for help, or when a plugin's command is named
    if command_named(sys.argv[1:]) not in cli.commands:
        add_plugin_commands(cli)
    cli.main(prog_name="ush")


if __name__ == "__main__":  # python -m usher.cli.ush: run the importable module's main
    from usher.cli import ush as _module

    _module.main()
