"""``usher admin-token``: the way back in for root on the controller's host.

The API refuses to revoke the last admin credential, but tokens also expire, and a database
may be restored from before one was made. Whoever can read the controller's state dir (and
its database) can make a new admin token directly, running or not, without the API.
"""

from __future__ import annotations

import asyncio

import click

from usher.ctrl.config import ADMIN_TOKEN_FILE, load_settings


@click.command("admin-token")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The controller's TOML config (for its state dir and database).",
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="The controller's state dir.")
@click.option("--print", "show", is_flag=True, help="Also print the token (else only its file).")
def admin_token(config_file: str | None, state_dir: str | None, show: bool) -> None:
    """Make a new admin token in the controller's database and write it to admin.token in
    its state dir (mode 0600). For root on the controller's host, e.g. after every admin
    credential was revoked or has expired."""
    from usher.ctrl.controller import write_secret
    from usher.ctrl.store import Store
    from usher.ctrl.tokens import issue_token

    try:
        settings = load_settings(config_file, state_dir=state_dir)
    except Exception as exc:
        raise click.ClickException(f"bad controller config: {exc}") from exc
    path = settings.state_dir / ADMIN_TOKEN_FILE
    if not settings.state_dir.is_dir():
        raise click.ClickException(f"no controller state dir {settings.state_dir}")

    async def issue() -> str:
        store = Store(settings.db_url)
        try:
            return await issue_token(
                store, "admin", ["admin"], description="made by `usher admin-token`"
            )
        finally:
            await store.engine.dispose()

    try:
        secret = asyncio.run(issue())
    except Exception as exc:
        raise click.ClickException(f"cannot write to the controller's database: {exc}") from exc
    write_secret(path, secret)
    click.echo(f"a new admin token is in {path}", err=True)
    if show:
        click.echo(secret)
