"""``usher node``: admit LNMs to the cluster and shut them out, on the controller's host.

The commands read the controller's config (or ``--state-dir``/``--listen``) to find its
URL, its CA and the admin token in its state dir, then call the admin API. Told nothing,
they use the site's default state dir, or the cluster ``usher local`` runs if that has none.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import click
import httpx

from usher.cli.local_cluster import running_local
from usher.ctrl.config import ADMIN_TOKEN_FILE, DEFAULT_STATE_DIR, Settings, load_settings
from usher.ctrl.tls import base_url, ca_file


def _ctrl_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--config",
                "config_file",
                type=click.Path(exists=True, dir_okay=False),
                help="The controller's TOML config.",
            ),
            click.option("--state-dir", type=click.Path(file_okay=False)),
            click.option("--listen", help="The controller's HOST:PORT."),
        ]
    ):
        fn = option(fn)
    return fn


def _call(
    config_file: str | None,
    state_dir: str | None,
    listen: str | None,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    local = running_local() if config_file is None and state_dir is None else None
    if local is not None and not (DEFAULT_STATE_DIR / ADMIN_TOKEN_FILE).exists():
        state_dir, listen = str(local.ctrl_state), listen or local.listen  # usher local's
    try:
        settings: Settings = load_settings(config_file, state_dir=state_dir, listen=listen)
        token = (settings.state_dir / ADMIN_TOKEN_FILE).read_text().strip()
    except Exception as exc:
        raise click.ClickException(f"cannot find the controller's admin token: {exc}") from exc
    ca = ca_file(settings) if settings.tls else None
    try:
        response = httpx.request(
            method,
            base_url(settings) + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            verify=ssl.create_default_context(cafile=ca) if ca else True,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach the controller: {exc}") from exc
    answer: dict[str, Any] = response.json()
    if response.is_error:
        raise click.ClickException(str(answer.get("error", answer)))
    return answer


@click.group()
def node() -> None:
    """Admit nodes (join tokens) and revoke their credentials."""


@node.command()
@_ctrl_options
@click.option(
    "--ttl", type=click.FloatRange(min=1), default=3600, show_default=True, help="Seconds."
)
@click.option(
    "--uses", type=click.IntRange(min=1), default=1, show_default=True, help="Nodes it admits."
)
def token(
    config_file: str | None, state_dir: str | None, listen: str | None, ttl: float, uses: int
) -> None:
    """Print a new join token for LNMs (`usher lnm --join-token-file`)."""
    answer = _call(
        config_file, state_dir, listen, "POST", "/v1/nodes/join-tokens", {"ttl": ttl, "uses": uses}
    )
    click.echo(answer["token"])


@node.command()
@_ctrl_options
@click.argument("name")
def revoke(config_file: str | None, state_dir: str | None, listen: str | None, name: str) -> None:
    """Revoke node NAME's credential and close its link."""
    answer = _call(config_file, state_dir, listen, "DELETE", f"/v1/nodes/{name}/credential")
    click.echo(f"revoked {answer['revoked']} credential(s) of node {name}")
