"""Built-in authentication by API token (bearer tokens stored hashed in the state store)."""

from __future__ import annotations

from typing import Any

from usher.ctrl.context import PluginContext
from usher.ctrl.tokens import digest
from usher.hookspecs import hookimpl
from usher.model import Principal, now


class TokenAuth:
    ctx: PluginContext

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx

    @hookimpl
    async def authenticate(self, token: str) -> Principal | None:
        row = await self.ctx.store.find_token(digest(token))
        if row is None or row.revoked or (row.expires_at is not None and row.expires_at < now()):
            return None
        return Principal(name=row.principal, roles=list(row.roles))
