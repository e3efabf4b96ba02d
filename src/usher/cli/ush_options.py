"""Options that several ``ush`` commands share, and how their values are read."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def split_names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    """``a, b,c`` as ``["a", "b", "c"]``."""
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def parse_kwargs(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict, each VALUE read as JSON if it parses."""
    kwargs: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


def parse_since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """Epoch seconds, or a duration ago (``30s``, ``10m``, ``2h``, ``1d``), as epoch seconds."""
    if value is None:
        return None
    if match := _AGO.match(value):
        return time.time() - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(
            "use epoch seconds or a duration ago like 30s, 10m, 2h, 1d"
        ) from None


def kwarg_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--kwarg KEY=VALUE`` (repeatable), passed to the command as ``kwargs``."""
    return click.option(
        "--kwarg",
        "kwargs",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_kwargs,
        help="Argument for plugins and drivers (VALUE is read as JSON if it parses). Repeatable.",
    )(command)


def tag_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--tag T`` (repeatable), passed as ``tags``."""
    return click.option("--tag", "tags", multiple=True, metavar="TAG", help=help_text)


def wait_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--wait/--no-wait``, passed as ``wait``."""
    return click.option(
        "--wait/--no-wait",
        default=True,
        help="Wait for the operation (default) or print its id and return.",
    )(command)


def strict_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--strict``, passed as ``strict``."""
    return click.option(
        "--strict",
        is_flag=True,
        help="Change nothing unless every VM can take the action (by default VMs already "
        "there are skipped, and the others go on without those that cannot).",
    )(command)


def dry_run_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--dry-run``, passed as ``dry_run``."""
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Only show where the VMs would go and why other nodes would not do.",
    )(command)


def require_targets(vms: Sequence[str], cluster: str | None) -> None:
    """A usage error unless the command names VMs or a cluster."""
    if not vms and not cluster:
        raise click.UsageError("name the VMs (ids or names), or give --cluster")
