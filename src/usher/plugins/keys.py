"""Built-in SSH keys: the public keys each user logs into guests with.

A user registers keys (``ush key add``); every guest whose image runs cloud-init gets, at its
first boot, an account for its owner (and, with ``authz``, for its cluster's members) that
logs in with them (hook ``ssh_keys``, read through ``PluginContext.ssh_keys``). Keys are
plugin data, one list per user. Routes, under ``/v1``:

* ``GET /keys``: the caller's keys (admins: ``?owner=`` anyone's).
* ``POST /keys``: register a key ``{"key": "ssh-ed25519 AAAA… comment", "name": …}``; the name
  defaults to the key's comment when that is a valid name.
* ``DELETE /keys/{name}``: forget a key (by name or fingerprint).

Keys already in a running guest stay there: a guest's accounts are made on its first boot.
Config ``[plugins.keys]``: ``max_keys``, keys a user may register (default 32).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from usher.model import Strict
from usher.plugin import (
    NAME_PATTERN,
    ContextDep,
    PluginContext,
    PluginData,
    PrincipalDep,
    RequestError,
    allow,
    check_ssh_key,
    hookimpl,
    is_name,
    ssh_fingerprint,
)

PLUGIN = "keys"
DEFAULT_MAX_KEYS = 32


class NewKey(Strict):
    key: str = Field(max_length=16 * 1024, description="one public key: TYPE BASE64 [COMMENT]")
    name: Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)] | None = None
    owner: str | None = Field(None, max_length=200, description="whose key (admins only)")


class SSHKey(BaseModel):
    name: str
    owner: str
    key: str
    fingerprint: str
    created_at: float


def _slot(user: str) -> str:
    return f"user:{user}"


class Keys:
    """The ``keys`` plugin."""

    def __init__(self) -> None:
        self.ctx: PluginContext | None = None
        self.max_keys = DEFAULT_MAX_KEYS

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        max_keys = config.get("max_keys", DEFAULT_MAX_KEYS)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or not 1 <= max_keys <= 1000:
            raise ValueError("[plugins.keys] max_keys must be 1 to 1000")
        self.max_keys = max_keys

    @hookimpl
    async def ssh_keys(self, user: str) -> list[str]:
        assert self.ctx is not None
        return [entry["key"] for entry in await self.ctx.get(PLUGIN, _slot(user), [])]

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(tags=["keys"])
        router.add_api_route("/keys", self.list_keys, methods=["GET"], response_model=list[SSHKey])
        router.add_api_route(
            "/keys", self.add_key, methods=["POST"], status_code=201, response_model=SSHKey
        )
        router.add_api_route(
            "/keys/{name}", self.remove_key, methods=["DELETE"], response_model=SSHKey
        )
        return [router]

    @staticmethod
    def _owner(principal: Any, owner: str | None) -> str:
        if owner in (None, principal.name):
            return str(principal.name)
        if not principal.is_admin:
            raise RequestError(403, f"{principal.name} may manage only its own keys")
        return str(owner)

    async def list_keys(
        self,
        ctx: ContextDep,
        principal: PrincipalDep,
        owner: Annotated[str | None, Query(max_length=200)] = None,
    ) -> list[SSHKey]:
        """Registered SSH keys: one's own (admins: anyone's, with ``owner``)."""
        who = self._owner(principal, owner)
        await allow(ctx, principal, "key.list", owner=who)
        return [SSHKey(owner=who, **entry) for entry in await ctx.get(PLUGIN, _slot(who), [])]

    async def add_key(self, body: NewKey, ctx: ContextDep, principal: PrincipalDep) -> SSHKey:
        """Register an SSH public key; guests created from now on let its owner in with it."""
        who = self._owner(principal, body.owner)
        await allow(ctx, principal, "key.add", owner=who)
        try:
            key = check_ssh_key(body.key)
        except ValueError as exc:
            raise RequestError(422, str(exc)) from exc
        print_ = ssh_fingerprint(key)
        comment = key.split(None, 2)[2] if len(key.split(None, 2)) > 2 else ""
        name = body.name or (comment if is_name(comment) and len(comment) <= 63 else None)
        name = name or f"key-{print_[7:15]}".replace("/", "_").replace("+", "-")
        entry = {"name": name, "key": key, "fingerprint": print_, "created_at": time.time()}

        async def adding(data: PluginData) -> None:
            keys: list[dict[str, Any]] = await data.get(_slot(who), [])
            for old in keys:
                if old["fingerprint"] == print_:
                    raise RequestError(409, f"this key is already registered as {old['name']!r}")
                if old["name"] == name:
                    raise RequestError(409, f"{who} already has a key named {name!r}")
            if len(keys) >= self.max_keys:
                raise RequestError(409, f"{who} has {len(keys)} keys, the most allowed")
            await data.put(_slot(who), [*keys, entry])

        await ctx.atomically(PLUGIN, adding)
        await ctx.emit("key_add", principal=principal.name, data=_event(who, entry))
        return SSHKey(owner=who, **entry)

    async def remove_key(
        self,
        name: str,
        ctx: ContextDep,
        principal: PrincipalDep,
        owner: Annotated[str | None, Query(max_length=200)] = None,
    ) -> SSHKey:
        """Forget a key, by its name or fingerprint (guests already made keep it)."""
        who = self._owner(principal, owner)
        await allow(ctx, principal, "key.remove", owner=who)

        async def removing(data: PluginData) -> dict[str, Any]:
            keys: list[dict[str, Any]] = await data.get(_slot(who), [])
            for entry in keys:
                if name in (entry["name"], entry["fingerprint"]):
                    await data.put(_slot(who), [k for k in keys if k is not entry])
                    return entry
            raise RequestError(404, f"{who} has no key {name[:100]!r}")

        entry = await ctx.atomically(PLUGIN, removing)
        await ctx.emit("key_remove", principal=principal.name, data=_event(who, entry))
        return SSHKey(owner=who, **entry)


def _event(owner: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"owner": owner, "name": entry["name"], "fingerprint": entry["fingerprint"]}
