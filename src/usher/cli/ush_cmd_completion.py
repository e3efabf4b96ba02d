"""``ush completion`` and ``ush man``: tab completion in the user's own shell, and man pages.

Completion is click's (the shell asks ``ush`` itself, with ``_USH_COMPLETE`` set; names of
VMs and nodes come from :mod:`usher.cli.ush_names`). Man pages are written by click-man from
the same commands and help texts.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import get_completion_class

from usher import __version__
from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_plugin_commands import add_plugin_commands

PROG = "ush"
COMPLETE_VAR = "_USH_COMPLETE"
SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """The tab-completion script for SHELL (bash, zsh or fish), on stdout.

    Install it once, for example for bash as root:
    `ush completion bash > /etc/bash_completion.d/ush` (or put
    `eval "$(ush completion bash)"` in ~/.bashrc). Commands, options, and the names of VMs
    and nodes complete; names come from the controller in use.
    """
    root = click.get_current_context().find_root().command
    script_class = get_completion_class(shell)
    assert script_class is not None, "click knows bash, zsh and fish"
    click.echo(script_class(root, {}, PROG, COMPLETE_VAR).source())


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default="/usr/local/share/man/man1",
    show_default=True,
    help="Where to write the pages (section 1).",
)
@pass_ush
def man(ush: Ush, directory: Path) -> None:
    """Write a man page for ush and each of its commands (`man ush-list`)."""
    from click_man.core import write_man_pages  # only this command needs it

    root = click.get_current_context().find_root().command
    assert isinstance(root, click.Group)
    add_plugin_commands(root)  # their pages too
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_man_pages(PROG, root, version=__version__, target_dir=str(directory))
    except OSError as exc:
        raise click.ClickException(f"cannot write the man pages to {directory}: {exc}") from exc
    pages = sorted(directory.glob(f"{PROG}*.1"))
    ush.out.note(f"wrote {len(pages)} man pages to {directory}: try `man ush` or `man ush-list`")


COMMANDS = [completion, man]
