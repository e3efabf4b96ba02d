"""``usher lnm --config FILE``: the LNM's options from a TOML file (``/etc/usher/lnm.toml``).

The file's keys are the options' names (``ctrl``, ``name``, ``driver``, ``state_dir``,
``storage_dir``, ``join_token_file``, ``ca_file``, ``migration_host``, ``vcpus``,
``memory_mb``, ``verbose``), with two tables: ``labels`` and ``driver_options``. They become
the options' defaults, so a flag on the command line wins.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

import click

RENAMED = {"ctrl": "ctrl_url"}
TABLES = {"labels", "driver_options"}


def _defaults(command: click.Command, data: dict[str, Any]) -> dict[str, Any]:
    known = {p.name for p in command.params if p.name and p.name != "config_file"}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = RENAMED.get(key, key.replace("-", "_"))
        if name not in known:
            names = sorted({*(k for k in known if k != "ctrl_url"), "ctrl"})
            raise click.BadParameter(f"unknown key {key!r} (known: {', '.join(names)})")
        if (name in TABLES) != isinstance(value, dict):
            kind = "a table" if name in TABLES else "not a table"
            raise click.BadParameter(f"{key} must be {kind}")
        if name == "labels":
            value = ",".join(f"{k}={_label(k, v)}" for k, v in value.items())
        elif name == "driver_options":
            value = [f"{k}={_json(key, v)}" for k, v in value.items()]
        elif isinstance(value, dict | list):
            raise click.BadParameter(f"{key} must be a single value")
        defaults[name] = value if isinstance(value, list | bool | int) else str(value)
    return defaults


def _label(key: str, value: Any) -> str:
    """A label's value as ``--labels`` takes it: a string or number, no ``,`` or ``=``."""
    if isinstance(value, dict | list) or any(c in f"{key}{value}" for c in ",="):
        raise click.BadParameter(f"labels.{key} must be a string or number without ',' or '='")
    return str(value)


def _json(table: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except TypeError as exc:  # TOML's dates and times
        raise click.BadParameter(f"{table} holds a value JSON cannot carry: {exc}") from exc


def load_defaults(ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
    """Click callback of ``--config``: the file's values become the command's defaults."""
    if path is None:
        return
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    ctx.default_map = {**(ctx.default_map or {}), **_defaults(ctx.command, data)}
