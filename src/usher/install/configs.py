"""The TOML configs ``usher install`` writes: ``ctrl.toml`` and ``lnm.toml``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    """``value`` (a string, number, bool, path, list or mapping of these) as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a TOML basic string
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def toml_document(comment: str, values: Mapping[str, Any]) -> str:
    """A TOML file: ``comment`` lines, then one ``key = value`` line each (None: left out)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{key} = {toml_value(value)}" for key, value in values.items() if value is not None]
    return "\n".join(lines) + "\n"


def ctrl_config(*, listen: str, names: list[str], storage: Path, database_url: str | None) -> str:
    return toml_document(
        "The Usher controller's settings (written by `usher install ctrl`; see docs/deploy.md\n"
        'and the README\'s "Configuration and state" for every setting).\n'
        "Without database_url the state is in SQLite, /var/lib/usher/usher.db.",
        {
            "listen": listen,
            "tls": True,
            "tls_names": names,
            "state_dir": "/var/lib/usher",
            "storage_dir": storage,
            "database_url": database_url,
        },
    )


def lnm_config(
    *,
    ctrl: str,
    name: str,
    driver: str,
    storage: Path,
    join_token_file: Path,
    ca_file: Path | None,
    migration_host: str,
    driver_options: Mapping[str, Any],
    vcpus: int | None,
    memory_mb: int | None,
) -> str:
    return toml_document(
        "This host's Usher LNM (written by `usher install lnm`; see docs/deploy.md). Keys are\n"
        "`usher lnm`'s options; a flag given on its command line wins.",
        {
            "ctrl": ctrl,
            "name": name,
            "driver": driver,
            "state_dir": "/var/lib/usher-lnm",
            "storage_dir": storage,
            "join_token_file": join_token_file,
            "ca_file": ca_file,
            "migration_host": migration_host,
            "vcpus": vcpus,
            "memory_mb": memory_mb,
            "driver_options": dict(driver_options) or None,
        },
    )
