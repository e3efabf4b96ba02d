"""``ush token create|list|revoke``: API tokens (the ``tokens`` plugin)."""

from __future__ import annotations

from typing import Any

import click

from usher.cli.api import Ush, UshGroup, fmt_time, fmt_value, pass_ush

COLUMNS = ("id", "principal", "roles", "groups", "state", "expires_at", "description")


def _show_tokens(ush: Ush, tokens: list[dict[str, Any]]) -> None:
    if ush.out.json:
        ush.out.emit(tokens)
        return
    rows = [
        [fmt_time(token[c]) if c.endswith("_at") else token[c] for c in COLUMNS] for token in tokens
    ]
    ush.out.table([column.replace("_at", "").upper() for column in COLUMNS], rows)


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
@click.option(
    "--role",
    "roles",
    multiple=True,
    help="A role of the token (repeatable; default: user, the least).",
)
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
