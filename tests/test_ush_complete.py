"""The shell's tab completion, driven with prompt_toolkit documents (no terminal)."""

from __future__ import annotations

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from usher.cli.ush import cli
from usher.cli.ush_complete import NameCache, UshCompleter
from usher.cli.ush_shell import history_file
from usher.client import UsherError
from usher.model import VMState


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


def test_a_choice_option_completes_its_values_not_names() -> None:
    assert complete("list --state ") == [state.value for state in VMState]
    assert complete("list --state st") == ["starting", "stopping", "stopped"]
    assert complete("list -o j") == ["json"]


def test_the_history_file_is_private_and_keeps_no_token(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USHER_HOME", str(tmp_path))
    history = history_file()
    for line in (
        "list",
        "connect https://c:8760 s3cr3t",
        "connect https://c:8760",
        "ush --token s3cr3t list",
        "stop web-1",
    ):
        history.store_string(line)
    path = tmp_path / "history"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "s3cr3t" not in text
    assert "connect https://c:8760" in text and "stop web-1" in text
