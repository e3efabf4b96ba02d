"""Users with passwords hashed with argon2, from the controller config and/or the API.

Config ``[plugins.passwords]``::

    users = {alice = {hash = "$argon2id$...", roles = ["user"], groups = ["physics"]}}

(``ush hash-password`` prints a hash; ``roles`` defaults to ``["user"]``, ``groups`` to none.)
Users of the config are fixed there; others are managed through the API and kept in the
plugin's data. Routes, under ``/v1``:

* ``GET /users``: list users, without hashes (admins).
* ``PUT /users/{name}``: create or change a user: ``password``, ``roles``, ``groups``
  (admins; any user may change its own password, and nothing else).
* ``DELETE /users/{name}``: remove a user (admins).

Logging in is ``POST /v1/login`` of the ``tokens`` plugin, which asks
:meth:`PasswordAuth.check_password`.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, ValidationError, field_validator

from usher.model import Principal, Strict
from usher.plugin import (
    ContextDep,
    PluginContext,
    PrincipalDep,
    RequestError,
    allow,
    hookimpl,
    is_reserved_principal,
)

PLUGIN = "passwords"
USERS_KEY = "users"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,199}$"
hasher = argon2.PasswordHasher()

NameParam = Annotated[str, PathParam(pattern=NAME_PATTERN)]


class User(Strict):
    """A user as stored: its argon2 hash, roles and groups."""

    hash: str
    roles: list[str] = Field(default_factory=lambda: ["user"])
    groups: list[str] = Field(default_factory=list)

    @field_validator("hash")
    @classmethod
    def _argon2(cls, value: str) -> str:
        try:
            argon2.extract_parameters(value)
        except InvalidHashError:
            raise ValueError("not an argon2 hash (make one with `ush hash-password`)") from None
        return value


class SetUser(Strict):
    """Body of ``PUT /v1/users/{name}``; what is left out stays as it was."""

    password: str | None = Field(None, min_length=1, max_length=1024)
    roles: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,63}$")]] | None = Field(
        None, max_length=32
    )
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@: -]{1,200}$")]] | None = Field(
        None, max_length=256
    )


class UserInfo(BaseModel):
    name: str
    roles: list[str]
    groups: list[str]
    source: str = Field(description="config (fixed in the controller config) or api")


class PasswordAuth:
    ctx: PluginContext

    def __init__(self) -> None:
        self.fixed: dict[str, User] = {}
        self._lock = asyncio.Lock()  # managed users are one JSON value: one writer at a time
        self._dummy = hasher.hash("no such user")  # unknown users take as long as known ones

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        users = config.get("users", {})
        if not isinstance(users, dict):
            raise ValueError("[plugins.passwords] users must be a table of users")
        for name, entry in users.items():
            if not re.fullmatch(NAME_PATTERN.strip("^$"), name):
                raise ValueError(f"[plugins.passwords] {name!r} is not a valid user name")
            if is_reserved_principal(name.lower()):
                raise ValueError(f"[plugins.passwords] user name {name!r} is Usher's own")
            try:
                self.fixed[name] = User.model_validate(entry)
            except ValidationError as exc:
                raise ValueError(f"[plugins.passwords] user {name!r}: {exc}") from exc

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/users", tags=["authentication"])
        router.add_api_route("", self.list_users, methods=["GET"], response_model=list[UserInfo])
        router.add_api_route("/{name}", self.set_user, methods=["PUT"], response_model=UserInfo)
        router.add_api_route("/{name}", self.delete_user, methods=["DELETE"], status_code=204)
        return [router]

    @hookimpl
    async def check_password(self, username: str, password: str) -> Principal | None:
        """The principal of ``username`` if ``password`` is its own, else ``None``."""
        user = self.fixed.get(username) or (await self._managed()).get(username)
        right = await asyncio.to_thread(_verify, user.hash if user else self._dummy, password)
        if user is None or not right:
            return None
        return Principal(name=username, roles=user.roles, groups=user.groups)

    # --- routes ------------------------------------------------------------------------

    async def list_users(self, ctx: ContextDep, principal: PrincipalDep) -> list[UserInfo]:
        """Every user, without password hashes (admins only)."""
        await allow(ctx, principal, "user.list")
        _admin_only(principal, "list users")
        managed = await self._managed()
        users = [_info(name, user, "config") for name, user in self.fixed.items()]
        users += [_info(name, user, "api") for name, user in managed.items()]
        return sorted(users, key=lambda u: u.name)

    async def set_user(
        self, name: NameParam, body: SetUser, ctx: ContextDep, principal: PrincipalDep
    ) -> UserInfo:
        """Create or change a user (admins), or change one's own password."""
        await allow(ctx, principal, "user.set", user=name)
        if not principal.is_admin and (
            name != principal.name or body.roles is not None or body.groups is not None
        ):
            raise RequestError(403, f"{principal.name} may change only its own password")
        if name in self.fixed:
            raise RequestError(409, f"user {name!r} is defined in the controller config")
        if is_reserved_principal(name.lower()):
            raise RequestError(422, f"user name {name!r} is Usher's own: choose another")
        async with self._lock:
            users = await self._managed()
            old = users.get(name)
            if old is None and body.password is None:
                raise RequestError(422, f"new user {name!r} needs a password")
            fields = old.model_dump() if old else {}
            if body.password is not None:
                fields["hash"] = await asyncio.to_thread(hasher.hash, body.password)
            fields.update(body.model_dump(exclude={"password"}, exclude_none=True))
            users[name] = user = User.model_validate(fields)
            await self._save(users)
        await ctx.emit("user_set", principal=principal.name, data={"user": name})
        return _info(name, user, "api")

    async def delete_user(self, name: NameParam, ctx: ContextDep, principal: PrincipalDep) -> None:
        """Remove a user managed through the API (admins only)."""
        await allow(ctx, principal, "user.delete", user=name)
        _admin_only(principal, "remove users")
        if name in self.fixed:
            raise RequestError(409, f"user {name!r} is defined in the controller config")
        async with self._lock:
            users = await self._managed()
            if users.pop(name, None) is None:
                raise RequestError(404, f"no user {name!r}")
            await self._save(users)
        await ctx.emit("user_delete", principal=principal.name, data={"user": name})

    # --- storage -----------------------------------------------------------------------

    async def _managed(self) -> dict[str, User]:
        raw = await self.ctx.get(PLUGIN, USERS_KEY, {})
        return {name: User.model_validate(entry) for name, entry in raw.items()}

    async def _save(self, users: dict[str, User]) -> None:
        await self.ctx.put(PLUGIN, USERS_KEY, {n: u.model_dump() for n, u in users.items()})


def _verify(stored: str, password: str) -> bool:
    try:
        return hasher.verify(stored, password)
    except VerificationError:
        return False


def _admin_only(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise RequestError(403, f"only admins may {what}")


def _info(name: str, user: User, source: str) -> UserInfo:
    return UserInfo(name=name, roles=user.roles, groups=user.groups, source=source)
