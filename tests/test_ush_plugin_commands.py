"""``ush`` commands added by entry point: the built-in plugins' own, and broken ones left out."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import click
import pytest

from usher.cli import ush_plugin_commands
from usher.cli.ush_group import UshGroup
from usher.cli.ush_launcher import command_named
from usher.cli.ush_plugin_commands import ENTRY_POINT_GROUP, add_plugin_commands

PLUGIN_COMMANDS = ("audit", "cluster", "ha", "hash-password", "token")


def _group_with(entries: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> UshGroup:
    """A group with one core command, ``list``, and ``entries`` as the installed entry points."""
    found = [EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in entries]
    monkeypatch.setattr(ush_plugin_commands, "entry_points", lambda group: found)
    group = UshGroup()
    group.add_command(click.Command("list"))
    return group


def test_an_entry_point_adds_its_command_under_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    group = _group_with([("high-availability", "usher.plugins.ha_ush:ha")], monkeypatch)
    add_plugin_commands(group)
    add_plugin_commands(group)  # again: nothing more, no warning
    assert sorted(group.commands) == ["high-availability", "list"]
    assert "--output" in group.commands["high-availability"].commands["status"].params[-1].opts


def test_broken_and_conflicting_entry_points_are_left_out_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [
        ("gone", "usher_no_such_package.commands:gone"),
        ("limit", "usher.cli.ush_group:OUTPUT_KEY"),
        ("list", "usher.plugins.audit_ush:audit"),
        ("ha", "usher.plugins.ha_ush:ha"),
        ("ha", "usher.plugins.audit_ush:audit"),
    ]
    group = _group_with(entries, monkeypatch)
    core_list = group.commands["list"]
    add_plugin_commands(group)
    assert sorted(group.commands) == ["ha", "list"]
    assert group.commands["list"] is core_list
    assert group.commands["ha"].name == "ha"
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 4
    assert all(line.startswith("ush: warning: left out command ") for line in warnings)
    assert warnings[0].endswith(
        "it does not load: ModuleNotFoundError: No module named 'usher_no_such_package'"
    )
    assert warnings[1].endswith("str is not a click command or group")
    assert warnings[2].endswith("a core command has that name")
    assert warnings[3].endswith("another entry point's command has that name")


def test_ush_lists_the_built_in_plugins_commands() -> None:
    """Through the entry points that Usher's own package declares (pyproject.toml)."""
    result = subprocess.run(
        [sys.executable, "-m", "usher.cli.ush", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(PLUGIN_COMMANDS) <= listed


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["list"], "list"),
        (["--url", "https://c", "-o", "json", "stop", "web-1"], "stop"),
        (["--remote", "lab", "audit"], "audit"),
        (["--help"], None),
        ([], None),
    ],
)
def test_a_core_command_is_told_apart_before_plugins_load(
    args: list[str], named: str | None
) -> None:
    """ush loads plugins' commands only when no core command is named (the shell, help, or
    a plugin's command): an installed plugin package may be slow to import."""
    assert command_named(args) == named
