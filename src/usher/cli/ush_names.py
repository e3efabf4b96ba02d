"""Names of VMs and nodes for tab completion in the user's shell (``ush completion``): from
the controller this command line would use, and silently none when it cannot be reached."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import click
from click.shell_completion import CompletionItem

from usher.cli.ush_session import Session
from usher.client import UsherError

NAMES_TIMEOUT = 2.0
"""Seconds a completion waits for the controller: a slow answer is no answer."""


def _names(
    ctx: click.Context, fetch: Callable[[Session], Iterable[str]], incomplete: str
) -> list[CompletionItem]:
    """The names ``fetch`` gets from the controller that this command line would use."""
    given = ctx.find_root().params
    session = Session(
        given.get("url"), given.get("token"), given.get("remote"), timeout=NAMES_TIMEOUT
    )
    try:
        names = sorted({name for name in fetch(session) if name.startswith(incomplete)})
    except (UsherError, OSError):
        return []
    finally:
        session.close()
    return [CompletionItem(name) for name in names]


def complete_vm_names(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``shell_complete`` for an argument naming VMs."""
    return _names(ctx, lambda session: (vm.name for vm in session.client.iter_vms()), incomplete)


def complete_node_names(
    ctx: click.Context, _param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``shell_complete`` for an argument naming nodes."""
    return _names(ctx, lambda session: (n.name for n in session.client.nodes()), incomplete)
