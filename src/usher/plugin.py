"""The front door for plugins: everything a plugin may use, in one module.

A plugin imports from here and from :mod:`usher.model` (the records' types), nothing else
of Usher's; the built-in plugins in ``usher.plugins`` do the same, which keeps this door
wide enough. What is not here is the controller's own business and may change in any
release. See ``docs/plugins.md`` for the hooks, the events and a worked example.

* Hooks: :data:`hookimpl` marks a hook implementation; :class:`Veto` refuses a request.
* :class:`PluginContext`, handed to ``usher_configure``: read the records
  (``ctx.records``), keep values (``get``/``put``/``atomically``), fire events, ask for
  operations (``submit``), fence a copy, authorize, API tokens (``ctx.credentials``).
* For the routes a plugin adds (``usher_routes``): :data:`ContextDep` (the context),
  :data:`PrincipalDep` (who calls), :func:`allow` and :func:`visible` (the authorization
  and listing scope hooks' say), :data:`BearerDep` and :func:`client_address`; raise
  :class:`RequestError` for an HTTP error with a message.
* The errors a plugin may meet: :class:`RequestError` (an operation or request refused),
  :class:`Forbidden`, :class:`NodeGone`, :class:`CommandFailed`, :class:`LastCredential`.
* For schedulers: :class:`Changes`, the log of what changed between two ``schedule`` calls.
* Guests: :class:`GuestConfig`, what the ``guest_config`` hook adds to (accounts, network,
  cloud-config), with :func:`account_name` and :class:`ConfigConflict`; ``ctx.ssh_keys``.
* Helpers: :class:`Window` (a rate limit), the bounds of names and principals.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials

from usher.bounds import (
    NAME_PATTERN,
    PRINCIPAL_PATTERN,
    PRINCIPAL_RE,
    check_json,
    is_name,
    is_reserved_principal,
)
from usher.ctrl.api.deps import ContextDep, PrincipalDep, bearer, client_address
from usher.ctrl.authz import Forbidden
from usher.ctrl.context import PluginContext, Records
from usher.ctrl.credentials import Credentials
from usher.ctrl.engine.errors import RequestError
from usher.ctrl.nodes import CommandFailed, NodeGone
from usher.ctrl.ratelimit import Window
from usher.ctrl.reservations import Changes
from usher.ctrl.store import LastCredential, PluginData
from usher.guest_config import ConfigConflict, GuestConfig, account_name, check_ssh_key
from usher.guest_config import fingerprint as ssh_fingerprint
from usher.hookspecs import Veto, hookimpl
from usher.model import Principal, Scope

BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
"""The bearer credentials of a request (None if it has none)."""


async def allow(ctx: PluginContext, principal: Principal, action: str, **target: Any) -> None:
    """In a route: refuse (403) unless the ``authorize`` hooks allow ``principal`` to do
    ``action`` on ``target``."""
    await ctx.authorize(principal, action, **target)


async def visible(ctx: PluginContext, principal: Principal) -> Scope | None:
    """In a route: what ``principal`` may see in listings (None: everything)."""
    return await ctx.scope(principal)


__all__ = [
    "NAME_PATTERN",
    "PRINCIPAL_PATTERN",
    "PRINCIPAL_RE",
    "BearerDep",
    "Changes",
    "CommandFailed",
    "ConfigConflict",
    "ContextDep",
    "Credentials",
    "Forbidden",
    "GuestConfig",
    "LastCredential",
    "NodeGone",
    "PluginContext",
    "PluginData",
    "PrincipalDep",
    "Records",
    "RequestError",
    "Veto",
    "Window",
    "account_name",
    "allow",
    "check_json",
    "check_ssh_key",
    "client_address",
    "hookimpl",
    "is_name",
    "is_reserved_principal",
    "ssh_fingerprint",
    "visible",
]
