"""The shell's tab completion, driven with prompt_toolkit documents (no terminal)."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from usher.cli.ush import cli
from usher.cli.ush_complete import NameCache, UshCompleter
from usher.client import UsherError


def complete(text: str, vms=("web-1", "web-2", "db-1"), nodes=("node-1", "node-2")) -> list[str]:
    completer = UshCompleter(
        cli, ["help", "quit"], NameCache(lambda: vms), NameCache(lambda: nodes)
    )
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]


def test_commands_first() -> None:
    assert complete("sto") == ["stop"]
    assert complete("") == sorted([*cli.commands, "help", "quit"])
    assert complete("q") == ["quit"]


def test_vm_names_then_nodes_then_options() -> None:
    assert complete("stop web") == ["web-1", "web-2"]
    assert complete("stop web-1 ") == ["db-1", "web-1", "web-2"]
    assert complete("migrate web-1 --to node-") == ["node-1", "node-2"]
    assert complete("drain n") == ["node-1", "node-2"]
    assert "--cluster" in complete("stop --cl")
    assert complete("nosuchcommand x") == []


def test_controller_errors_complete_nothing() -> None:
    def fail() -> list[str]:
        raise UsherError(None, "cannot reach the controller")

    completer = UshCompleter(cli, [], NameCache(fail), NameCache(fail))
    assert list(completer.get_completions(Document("stop w"), CompleteEvent())) == []
