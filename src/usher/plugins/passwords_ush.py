"""``ush hash-password``: a password's hash for the users of the ``passwords`` plugin."""

from __future__ import annotations

import argon2
import click


@click.command("hash-password")
def hash_password() -> None:
    """Print the argon2 hash of a password (for [plugins.passwords] users in the config)."""
    password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    click.echo(argon2.PasswordHasher().hash(password))
