"""Built-in authentication by API token, token management and password login.

Tokens are random secrets stored only as their SHA-256 digest (:class:`usher.plugin.Credentials`),
optionally with an expiry. Routes, under ``/v1``:

* ``POST /tokens``: create a token (admins: for anyone, any roles; others: for themselves,
  with roles and groups they have). The answer is the only place the secret is ever shown.
* ``GET /tokens``: list tokens (admins: all, or ``?owner=``; others: their own).
* ``DELETE /tokens/{id}``: revoke a token (admins: any; others: their own).
* ``POST /login``: exchange a username and password for a session token. No bearer token is
  needed. The ``check_password`` hook (``passwords``, ``ldap``) is asked plugin by plugin in
  configured order; the first that accepts decides who the session belongs to.
* ``POST /logout``: revoke the token the request was made with.

Config ``[plugins.tokens]``: ``session_ttl``, seconds a login session lasts (default 12 h);
``roles``, the site's roles a token may carry besides ``admin``, ``operator`` and ``user`` (a
token made without roles gets ``user``, the least; an unknown role is refused).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from usher.model import ApiToken, Principal, PrincipalName, Strict, Text
from usher.plugin import (
    PRINCIPAL_RE,
    BearerDep,
    ContextDep,
    LastCredential,
    PluginContext,
    PrincipalDep,
    RequestError,
    Window,
    allow,
    client_address,
    hookimpl,
    is_reserved_principal,
)

DEFAULT_SESSION_TTL = 12 * 3600.0
PLUGIN = "tokens"
log = logging.getLogger("usher.plugin.tokens")


RoleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,63}$")]
GroupName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@: -]{1,200}$")]
NODE_ROLE = "node"
"""The role of node credentials and join tokens: they work on the node link only."""


class NewToken(Strict):
    """Body of ``POST /v1/tokens``; left out, ``principal`` and ``groups`` are the caller's
    own, and ``roles`` is ``["user"]`` (the least role; none if the caller may not give it)."""

    principal: PrincipalName | None = None
    roles: list[RoleName] | None = Field(None, max_length=32)
    groups: list[GroupName] | None = Field(None, max_length=256)
    ttl: float | None = Field(
        None, gt=0, le=100 * 365 * 86400, description="seconds until the token expires"
    )
    description: Text = ""


class Credentials(Strict):
    """Body of ``POST /v1/login``."""

    username: Text = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1024)


class TokenInfo(BaseModel):
    """A token as listed: everything but its secret."""

    id: str
    principal: str
    roles: list[str]
    groups: list[str]
    description: str
    created_at: float
    expires_at: float | None
    revoked: bool
    state: str = Field(description="active, expired or revoked")


class IssuedToken(TokenInfo):
    """A new token, with its secret (shown this once, never again)."""

    token: str


DEFAULT_ROLES = ("admin", "operator", "user")
"""Usher's own roles: admin, operator (the authz plugin's) and user."""
LEAST_ROLE = "user"


class TokenAuth:
    ctx: PluginContext
    session_ttl: float = DEFAULT_SESSION_TTL
    roles: tuple[str, ...] = DEFAULT_ROLES
    """The roles a token may carry (``[plugins.tokens] roles``: the site's, if it has more)."""

    def __init__(self) -> None:
        self._groups: dict[str, list[str]] = {}  # token id -> groups; they never change
        self._failed_users = Window(limit=10)  # failed logins per user name, a minute
        self._failed_addresses = Window(limit=10)  # and per client address

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        ttl = float(config.get("session_ttl", DEFAULT_SESSION_TTL))
        if ttl <= 0:
            raise ValueError(f"[plugins.tokens] session_ttl must be positive, not {ttl}")
        self.session_ttl = ttl
        roles = config.get("roles", list(DEFAULT_ROLES))
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            raise ValueError("[plugins.tokens] roles must be a list of role names")
        self.roles = tuple(dict.fromkeys([*DEFAULT_ROLES, *roles]))
        limit = ctx.settings.login_failures
        self._failed_users.limit = self._failed_addresses.limit = limit

    @hookimpl
    async def authenticate(self, token: str) -> Principal | None:
        row = await self.ctx.credentials.find(token)
        if row is None or row.state != "active":
            return None
        return Principal(name=row.principal, roles=list(row.roles), groups=await self._of(row))

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(tags=["authentication"])
        router.add_api_route(
            "/tokens",
            self.create_token,
            methods=["POST"],
            status_code=201,
            response_model=IssuedToken,
        )
        router.add_api_route(
            "/tokens", self.list_tokens, methods=["GET"], response_model=list[TokenInfo]
        )
        router.add_api_route(
            "/tokens/{token_id}", self.revoke_token, methods=["DELETE"], response_model=TokenInfo
        )
        router.add_api_route("/login", self.login, methods=["POST"], response_model=IssuedToken)
        router.add_api_route("/logout", self.logout, methods=["POST"], response_model=TokenInfo)
        return [router]

    # --- routes ------------------------------------------------------------------------

    async def create_token(
        self, body: NewToken, ctx: ContextDep, principal: PrincipalDep
    ) -> IssuedToken:
        """Create an API token; its secret is in this answer only."""
        owner = body.principal or principal.name
        roles = self._least(principal) if body.roles is None else body.roles
        known = (*self.roles, *principal.roles)  # and any the caller holds (LDAP, passwords)
        unknown = [role for role in roles if role not in known and role != NODE_ROLE]
        if unknown:
            raise RequestError(
                422,
                f"unknown role(s) {', '.join(unknown)}: a token's roles are among "
                f"{', '.join(self.roles)} (a site adds its own in [plugins.tokens] roles)",
            )
        groups = principal.groups if body.groups is None else body.groups
        await allow(ctx, principal, "token.create", owner=owner, roles=roles)
        if not principal.is_admin:
            _check_own(principal, owner, roles, groups)
        if NODE_ROLE in roles or owner.startswith("node:") or owner == "node-join":
            raise RequestError(
                422,
                "the node role and node principals are for node credentials only "
                "(`usher node token` admits a node)",
            )
        issued = await self._issue(owner, roles, groups, body.description, body.ttl)
        await ctx.emit(
            "token_create",
            principal=principal.name,
            data={"token": issued.id, "for": owner, "roles": roles},
        )
        return issued

    async def list_tokens(
        self, ctx: ContextDep, principal: PrincipalDep, owner: str | None = None
    ) -> list[TokenInfo]:
        """Tokens, without their secrets: all of them for admins, one's own for others."""
        await allow(ctx, principal, "token.list", owner=owner)
        if not principal.is_admin:
            if owner not in (None, principal.name):
                raise RequestError(403, f"{principal.name} may list only its own tokens")
            owner = principal.name
        return [await self._info(row) for row in await ctx.credentials.list(owner)]

    async def revoke_token(
        self, token_id: str, ctx: ContextDep, principal: PrincipalDep
    ) -> TokenInfo:
        """Revoke a token: it is refused from now on (revoking twice is fine)."""
        row = await ctx.credentials.get(token_id)
        if row is None or not (principal.is_admin or row.principal == principal.name):
            raise RequestError(404, f"no token {token_id!r} of yours")
        await allow(ctx, principal, "token.revoke", token=token_id, owner=row.principal)
        return await self._revoke(row, principal.name)

    async def login(self, body: Credentials, ctx: ContextDep, request: Request) -> IssuedToken:
        """Exchange a username and password for a session token (no bearer token needed).

        At most ``login_failures`` failed logins a minute per user name and per client
        address are checked; more are refused (429) without asking any password plugin.
        The principals Usher keeps for itself (``admin``, ``system``, nodes') cannot log in.
        """
        address = client_address(request) or "?"
        user = body.username.lower()
        for window, key, what in (
            (self._failed_users, user, "user"),
            (self._failed_addresses, address, "address"),
        ):
            if window.over(key):
                raise RequestError(
                    429,
                    f"too many failed logins for this {what}; try again in "
                    f"{window.retry_after(key)} s",
                )
        if is_reserved_principal(user):
            await self._failed(body.username, address, ["reserved principal"])
            raise RequestError(401, "login failed: unknown user or wrong password")
        tried: list[str] = []
        failures: list[str] = []
        async for name, who, error in ctx.check_password(body.username, body.password):
            tried.append(name)
            if who is not None and (
                is_reserved_principal(who.name) or not PRINCIPAL_RE.fullmatch(who.name)
            ):
                log.warning("plugin %s answered principal %r: refused", name, who.name[:200])
                who = None
            if error is not None:
                failures.append(f"{name}: {getattr(error, 'reason', error)}")
            elif who is not None:
                session = await self._issue(
                    who.name, who.roles, who.groups, "session", self.session_ttl
                )
                await ctx.emit(
                    "login",
                    principal=who.name,
                    data={"via": name, "token": session.id, "address": client_address(request)},
                )
                return session
        if not tried:
            raise RequestError(404, "password login is off: enable the passwords or ldap plugin")
        await self._failed(body.username, address, failures)
        if failures:
            raise RequestError(503, "login failed, a password check broke: " + "; ".join(failures))
        raise RequestError(
            401, f"login failed: unknown user or wrong password (tried {', '.join(tried)})"
        )

    async def logout(self, ctx: ContextDep, principal: PrincipalDep, creds: BearerDep) -> TokenInfo:
        """Revoke the token this request is made with."""
        assert creds is not None  # PrincipalDep has authenticated it
        row = await ctx.credentials.find(creds.credentials)
        if row is None:
            raise RequestError(400, "this request's token is not an API token of this plugin")
        return await self._revoke(row, principal.name)

    # --- helpers -----------------------------------------------------------------------

    @staticmethod
    def _least(principal: Principal) -> list[str]:
        """A new token's roles when none are asked for: the least role, ``user``, if the
        caller may give it, else the caller's own (never admin by default)."""
        if principal.is_admin or LEAST_ROLE in principal.roles:
            return [LEAST_ROLE]
        return [role for role in principal.roles if role != "admin"]

    async def _failed(self, username: str, address: str, errors: list[str]) -> None:
        """Count a failed login (its event, ``login_failure``, is one of a bounded few)."""
        self._failed_users.hit(username.lower())
        self._failed_addresses.hit(address)
        await self.ctx.emit(
            "login_failure", principal=username, data={"address": address, "errors": errors}
        )

    async def _issue(
        self,
        owner: str,
        roles: list[str],
        groups: list[str],
        description: str,
        ttl: float | None,
    ) -> IssuedToken:
        secret, row = await self.ctx.credentials.issue(
            owner, list(roles), description=description, ttl=ttl
        )
        if groups:
            await self.ctx.put(PLUGIN, _groups_key(row.id), list(groups))
        self._groups[row.id] = list(groups)
        return IssuedToken(**(await self._info(row)).model_dump(), token=secret)

    async def _revoke(self, row: ApiToken, by: str) -> TokenInfo:
        """Revoke ``row``, unless it is the last admin credential: revoking that would lock
        every administrator out (checked and done in one transaction, so two revocations
        at once cannot both pass)."""
        try:
            await self.ctx.credentials.revoke(row.id, keep_one_of="admin")
        except LastCredential as exc:
            raise RequestError(
                409,
                f"{exc}: revoking it would lock every administrator out. Create another "
                "admin token first (ush token create --roles admin), or, as root on the "
                "controller's host, make one with `usher admin-token`",
            ) from None
        row.revoked = True
        await self.ctx.emit(
            "token_revoke", principal=by, data={"token": row.id, "for": row.principal}
        )
        return await self._info(row)

    async def _of(self, row: ApiToken) -> list[str]:
        """The groups of a token (kept in plugin data: the tokens table has no column)."""
        if row.id not in self._groups:
            self._groups[row.id] = await self.ctx.get(PLUGIN, _groups_key(row.id), [])
        return list(self._groups[row.id])

    async def _info(self, row: ApiToken) -> TokenInfo:
        return TokenInfo(
            id=row.id,
            principal=row.principal,
            roles=list(row.roles),
            groups=await self._of(row),
            description=row.description,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked=row.revoked,
            state=row.state,
        )


def _check_own(principal: Principal, owner: str, roles: list[str], groups: list[str]) -> None:
    """Refuse a token a non-admin may not make: for someone else, or with more power."""
    if owner != principal.name:
        raise RequestError(403, f"{principal.name} may create tokens only for itself")
    for kind, asked, held in (
        ("roles", roles, principal.roles),
        ("groups", groups, principal.groups),
    ):
        beyond = sorted(set(asked) - set(held))
        if beyond:
            raise RequestError(
                403, f"{principal.name} may not give a token {kind} it lacks: {beyond}"
            )


def _groups_key(token_id: str) -> str:
    return f"groups/{token_id}"
