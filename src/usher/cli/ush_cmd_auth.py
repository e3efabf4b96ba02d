"""``ush token …``, ``ush login``, ``ush logout`` and ``ush hash-password``.

``ush login`` exchanges a username and password for a session token (``POST /v1/login``) and
keeps it, with the controller's URL, in ``$USHER_HOME/config.toml`` (``~/.usher``, mode 0600);
``ush logout`` revokes that token and removes it from the file.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import argon2
import click
from rich.table import Table
from rich.text import Text

from usher.cli.ush import Ush, UshGroup, pass_ush
from usher.cli.ush_render import fmt_time, fmt_value
from usher.client.config import resolve
from usher.client.config import save as save_config
from usher.client.config import saved as saved_config

TOKEN_COLUMNS = ("id", "principal", "roles", "groups", "state", "expires_at", "description")


def _show_tokens(ush: Ush, tokens: list[dict[str, Any]]) -> None:
    if ush.out.json:
        ush.out.emit(tokens)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in TOKEN_COLUMNS:
        table.add_column(column.replace("_at", "").upper())
    for token in tokens:
        cells = [
            fmt_time(token[c]) if c.endswith("_at") else fmt_value(token[c]) for c in TOKEN_COLUMNS
        ]
        table.add_row(*(Text(cell) for cell in cells))
    ush.out.console.print(table)


def _show_issued(ush: Ush, issued: dict[str, Any]) -> None:
    """A new token: the secret alone on stdout (JSON: everything), the rest on stderr."""
    if ush.out.json:
        ush.out.emit(issued)
        return
    click.echo(issued["token"])
    expiry = f", expires {fmt_time(issued['expires_at'])}" if issued["expires_at"] else ""
    ush.out.note(
        f"token {issued['id']} for {issued['principal']} (roles: {fmt_value(issued['roles'])}"
        f"{expiry}); the secret above is shown this once"
    )


@click.group(cls=UshGroup)
def token() -> None:
    """Manage API tokens: create, list, revoke."""


@token.command("create")
@click.option("--user", help="Whom the token is for (admins only; default: yourself).")
@click.option("--role", "roles", multiple=True, help="A role of the token (default: yours).")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), help="Seconds it is valid.")
@click.option("--description", default="", help="What the token is for.")
@pass_ush
def token_create(
    ush: Ush, user: str | None, roles: tuple[str, ...], ttl: float | None, description: str
) -> None:
    """Create an API token and print its secret (shown this once)."""
    body = {"principal": user, "roles": list(roles) or None, "ttl": ttl, "description": description}
    _show_issued(ush, ush.client.request("POST", "/tokens", body=body))


@token.command("list")
@click.option("--user", help="Only this user's tokens (admins; others see only their own).")
@pass_ush
def token_list(ush: Ush, user: str | None) -> None:
    """List API tokens (never their secrets)."""
    _show_tokens(ush, ush.client.request("GET", "/tokens", params={"owner": user}))


@token.command("revoke")
@click.argument("token_id", metavar="ID")
@pass_ush
def token_revoke(ush: Ush, token_id: str) -> None:
    """Revoke an API token by its id."""
    _show_tokens(ush, [ush.client.request("DELETE", f"/tokens/{token_id}")])


@click.command()
@click.option("-u", "--username", help="Your user name (prompted for if not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@pass_ush
def login(ush: Ush, username: str | None, password_stdin: bool) -> None:
    """Log in with a username and password; keep the session token in ~/.usher/."""
    username = username or click.prompt("username")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True)
    body = {"username": username, "password": password}
    session = ush.client.request("POST", "/login", body=body)
    path = save_config({"url": ush.client.url, "token": session["token"]})
    if ush.out.json:
        ush.out.emit({k: v for k, v in session.items() if k != "token"} | {"config": str(path)})
    ush.out.note(
        f"logged in as {session['principal']} (roles: {fmt_value(session['roles'])}) until "
        f"{fmt_time(session['expires_at'])}; the session token is in {path}"
    )
    if os.environ.get("USHER_TOKEN"):
        ush.out.note("note: USHER_TOKEN is set and is used instead of the saved token")


@click.command()
@pass_ush
def logout(ush: Ush) -> None:
    """Revoke the token ush uses and remove it from ~/.usher/config.toml."""
    used = resolve(ush.session.url, ush.session.token).token
    revoked = ush.client.request("POST", "/logout")
    saved = saved_config()
    if used and saved.get("token") == used:
        save_config({"url": saved.get("url") or ush.client.url, "token": None})
    if ush.out.json:
        ush.out.emit(revoked)
    else:
        ush.out.note(f"logged out: token {revoked['id']} of {revoked['principal']} is revoked")


@click.command("hash-password")
def hash_password() -> None:
    """Print the argon2 hash of a password (for [plugins.passwords] users in the config)."""
    password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    click.echo(argon2.PasswordHasher().hash(password))


def register(group: click.Group) -> None:
    for command in (token, login, logout, hash_password):
        group.add_command(command)
