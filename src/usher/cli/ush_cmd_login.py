"""``ush login``, ``ush logout`` and ``ush whoami``: who ush is to the controller.

``ush login`` exchanges a username and password for a session token (``POST /v1/login``) and
keeps it, with the controller's URL, in ``$USHER_HOME/config.toml`` (``~/.usher``, mode 0600);
``ush logout`` revokes that token and removes it from the file.
"""

from __future__ import annotations

import os
import re
import sys
from urllib.parse import urlsplit

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_render import fmt_time, fmt_value
from usher.client.config import remote_for, resolve
from usher.client.config import save as save_config
from usher.client.config import saved as saved_config


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
    remote = _remote_of(ush)
    path = save_config({"url": ush.client.url, "token": session["token"]}, remote=remote)
    if ush.out.json:
        ush.out.emit({k: v for k, v in session.items() if k != "token"} | {"config": str(path)})
    ush.out.note(
        f"logged in as {session['principal']} (roles: {fmt_value(session['roles'])}) until "
        f"{fmt_time(session['expires_at'])}; the session token is in {path}"
        + (f" (remote {remote})" if remote else "")
    )
    if os.environ.get("USHER_TOKEN"):
        ush.out.note("note: USHER_TOKEN is set and is used instead of the saved token")


def _remote_of(ush: Ush) -> str | None:
    """The remote a login's token belongs to: the one named, else the one with the URL
    ush talks to, else (a URL given that no remote has) a new remote named after its host
    (None: the remote in use)."""
    if ush.session.remote:
        return ush.session.remote
    if not ush.session.url:
        return None
    known = remote_for(ush.client.url)
    if known:
        return known
    host = urlsplit(ush.client.url).netloc.replace(":", "-")
    return re.sub(r"[^A-Za-z0-9._-]", "-", host).lstrip(".-_")[:63] or "remote"


@click.command()
@pass_ush
def logout(ush: Ush) -> None:
    """Revoke the token ush uses and remove it from ~/.usher/config.toml."""
    used = resolve(ush.session.url, ush.session.token, remote=ush.session.remote).token
    revoked = ush.client.request("POST", "/logout")
    remote = ush.session.remote or remote_for(ush.client.url)
    if used and remote and saved_config(remote=remote).get("token") == used:
        save_config({"token": None}, remote=remote)
    if ush.out.json:
        ush.out.emit(revoked)
    else:
        ush.out.note(f"logged out: token {revoked['id']} of {revoked['principal']} is revoked")


@click.command()
@pass_ush
def whoami(ush: Ush) -> None:
    """Show who the token belongs to."""
    ush.out.principal(ush.client.whoami())


COMMANDS: tuple[click.Command, ...] = (login, logout, whoami)
