"""Authorization: every API action asks the ``authorize`` hook before it does anything."""

from __future__ import annotations

from typing import Any

from usher.ctrl.plugins import PluginError, PluginHost
from usher.model import Principal


class Forbidden(Exception):
    """The principal may not do this; the message says what was refused."""


async def authorize(
    plugins: PluginHost, principal: Principal, action: str, target: dict[str, Any]
) -> None:
    """Raise :class:`Forbidden` unless the plugins allow ``action`` (allowed if none answers).

    Node links (principals with only the ``node`` role) never pass through the user API.
    """
    if principal.roles == ["node"]:
        raise Forbidden(f"{principal.name} is a node credential and may not call the API")
    try:
        answer = await plugins.decide(
            "authorize", principal=principal, action=action, target=target
        )
    except PluginError as exc:
        raise Forbidden(f"authorization failed: {exc}") from exc
    if answer is False:
        raise Forbidden(f"{principal.name} may not {action}")
