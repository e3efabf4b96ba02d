"""The interactive Usher shell: every ush command, typed without ``ush``."""

from __future__ import annotations

import os
import shlex

import click
from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.shortcuts import CompleteStyle

from usher.cli.ush_complete import NameCache, UshCompleter
from usher.cli.ush_session import Session
from usher.client import UsherError
from usher.client.config import usher_home

BUILTINS = ("help", "connect", "quit", "exit")

SHELL_HELP = """
Shell commands:
  help [COMMAND]        this help, or the help of COMMAND
  connect URL [TOKEN]   talk to another controller for the rest of the session
  quit, exit, Ctrl-D    leave
"""


class Shell:
    """Reads lines and runs each as an ush command in the same :class:`Session`."""

    def __init__(self, group: click.Group, session: Session) -> None:
        self.group = group
        self.session = session

    def handle(self, line: str) -> bool:
        """Run one line; ``False`` when the user asked to leave."""
        try:
            args = shlex.split(line, comments=True)
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            return True
        if args[:1] == ["ush"]:
            args = args[1:]
        if not args:
            return True
        command, *rest = args
        if command in ("quit", "exit"):
            return False
        if command == "help":
            self.invoke([*rest, "--help"])
            if not rest:
                click.echo(SHELL_HELP)
        elif command == "connect":
            self.connect(rest)
        else:
            self.invoke(args)
        return True

    def invoke(self, args: list[str]) -> None:
        """Run one ush command; errors are shown, and the shell goes on."""
        try:
            self.group.main(args, prog_name="ush", standalone_mode=False, obj=self.session)
        except click.ClickException as exc:
            exc.show()
        except click.Abort:
            click.echo("interrupted", err=True)

    def connect(self, args: list[str]) -> None:
        if len(args) not in (1, 2):
            click.echo("usage: connect URL [TOKEN]", err=True)
            return
        self.session.connect(args[0], args[1] if len(args) == 2 else None)
        try:
            client = self.session.client
            click.echo(f"connected to {client.url} as {client.whoami().name}")
        except UsherError as exc:
            click.echo(f"error: {exc.message}", err=True)

    def run(self) -> None:
        """The read-eval loop on the terminal, until ``quit`` or end of input."""
        prompt: PromptSession[str] = PromptSession(
            history=history_file(),
            completer=UshCompleter(
                self.group,
                BUILTINS,
                vm_names=NameCache(lambda: (vm.name for vm in self.session.client.iter_vms())),
                node_names=NameCache(lambda: (n.name for n in self.session.client.nodes())),
            ),
            complete_style=CompleteStyle.READLINE_LIKE,
        )
        while True:
            try:
                line = prompt.prompt("ush> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return
            if not self.handle(line):
                return


def history_file() -> History:
    """Lines from earlier sessions, in ``~/.usher/history`` (mode 0600) when that can be
    written."""
    home = usher_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        path = home / "history"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)
    except OSError:
        return InMemoryHistory()
    return PrivateHistory(str(path))


class PrivateHistory(FileHistory):
    """A history file that keeps no token: a ``connect URL TOKEN`` line is not written."""

    def store_string(self, string: str) -> None:
        if not carries_token(string):
            super().store_string(string)


def carries_token(line: str) -> bool:
    """Whether ``line`` is a ``connect`` (or ``--token``) line with a token in it."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return "connect" in line or "--token" in line  # unparsable: keep nothing risky
    if words[:1] == ["ush"]:
        words = words[1:]
    return (words[:1] == ["connect"] and len(words) > 2) or any(
        w == "--token" or w.startswith("--token=") for w in words
    )
