"""``ush key add|list|rm``: the SSH public keys you log into guests with (the ``keys`` plugin)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from usher.cli.api import Ush, UshGroup, fmt_time, pass_ush

COLUMNS = ("name", "fingerprint", "created_at")
KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def _show(ush: Ush, keys: list[dict[str, Any]]) -> None:
    if ush.out.json:
        ush.out.emit(keys)
        return
    rows = [[fmt_time(k[c]) if c.endswith("_at") else k[c] for c in COLUMNS] for k in keys]
    ush.out.table([c.replace("_at", "").upper() for c in COLUMNS], rows)


def default_public_key() -> Path | None:
    """The first of ``~/.ssh/id_ed25519.pub``, ``id_ecdsa.pub``, ``id_rsa.pub`` that exists."""
    ssh_dir = Path(os.path.expanduser("~/.ssh"))
    return next((ssh_dir / name for name in KEY_FILES if (ssh_dir / name).is_file()), None)


@click.group(cls=UshGroup)
def key() -> None:
    """Your SSH public keys: guests made from now on let you in with them."""


@key.command("add")
@click.argument("file", required=False, type=click.File("r", encoding="utf-8", errors="strict"))
@click.option("--name", help="What to call it (default: its comment, if that is a name).")
@click.option("--user", help="Whose key (admins only; default: yours).")
@pass_ush
def key_add(ush: Ush, file: Any, name: str | None, user: str | None) -> None:
    """Register the public key in FILE (`-` for stdin; default ~/.ssh/id_ed25519.pub, …)."""
    if file is None:
        path = default_public_key()
        if path is None:
            raise click.UsageError("no ~/.ssh/id_*.pub found: name a public key FILE")
        file = path.open(encoding="utf-8")
    with file:
        text = file.read(64 * 1024).strip()
    body = {"key": text, "name": name, "owner": user}
    _show(ush, [ush.client.request("POST", "/keys", body=body)])


@key.command("list")
@click.option("--user", help="Whose keys (admins only; default: yours).")
@pass_ush
def key_list(ush: Ush, user: str | None) -> None:
    """List your registered SSH keys."""
    _show(ush, ush.client.request("GET", "/keys", params={"owner": user}))


@key.command("rm")
@click.argument("name")
@click.option("--user", help="Whose key (admins only; default: yours).")
@pass_ush
def key_rm(ush: Ush, name: str, user: str | None) -> None:
    """Forget a key, by NAME or fingerprint (guests already made keep it)."""
    path = f"/keys/{click.format_filename(name)}"
    _show(ush, [ush.client.request("DELETE", path, params={"owner": user})])
