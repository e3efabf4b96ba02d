"""``usher backup FILE`` and ``usher restore FILE``: the controller's state to a file and back
(what a backup holds: :mod:`usher.ctrl.backup.run`; docs/backup.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from usher.ctrl.config import Settings, load_settings

_config = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The controller's TOML config (for its state dir and database).",
)
_state_dir = click.option(
    "--state-dir", type=click.Path(file_okay=False), help="The controller's state dir."
)
_output = click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: a machine-readable summary on stdout (progress is always on stderr).",
)


def _settings(config_file: str | None, state_dir: str | None) -> Settings:
    try:
        return load_settings(config_file, state_dir=state_dir)
    except Exception as exc:
        raise click.ClickException(f"bad controller config: {exc}") from exc


def _progress(line: str) -> None:
    click.echo(f"usher: {line}", err=True)


def _run(what: str, output: str, job: Callable[[], dict[str, Any]]) -> None:
    from usher.ctrl.backup.archive import BadBackup
    from usher.ctrl.backup.databases import RestoreRefused
    from usher.ctrl.statelock import StateLocked

    try:
        summary = job()
    except (BadBackup, RestoreRefused, StateLocked) as exc:
        raise click.ClickException(f"{what} refused: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"{what} failed: {exc}") from exc
    if output == "json":
        click.echo(json.dumps(summary, indent=1, sort_keys=True))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_config
@_state_dir
@_output
def backup(config_file: str | None, state_dir: str | None, file: Path, output: str) -> None:
    """Write a backup of the controller's state to FILE (mode 0600: it holds secrets): its
    database, consistent while the controller runs, and its state dir's files."""
    from usher.ctrl.backup.run import backup as run_backup

    settings = _settings(config_file, state_dir)
    _run("backup", output, lambda: run_backup(settings, file, _progress))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_config
@_state_dir
@click.option(
    "--no-keep",
    is_flag=True,
    help="Do not keep the state the restore replaces (by default it is written to "
    "pre-restore-<time>.tar.gz in the state dir first).",
)
@_output
def restore(
    config_file: str | None, state_dir: str | None, file: Path, no_keep: bool, output: str
) -> None:
    """Replace the controller's state by that of backup FILE. The controller must be
    stopped; when it starts again it reconciles with the LNMs as after a crash."""
    from usher.ctrl.backup.run import restore as run_restore

    settings = _settings(config_file, state_dir)
    _run("restore", output, lambda: run_restore(settings, file, _progress, keep=not no_keep))
