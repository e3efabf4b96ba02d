"""API tokens as plugins handle them: issued, found by secret, listed, revoked. Secrets
are random and kept only as their SHA-256 digest."""

from __future__ import annotations

from usher.ctrl.store import Store
from usher.ctrl.tokens import digest, issue_token
from usher.model import ApiToken


class Credentials:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def issue(
        self, principal: str, roles: list[str], *, description: str = "", ttl: float | None
    ) -> tuple[str, ApiToken]:
        """A new token for ``principal``: its secret (never kept) and its record."""
        secret = await issue_token(
            self._store, principal, list(roles), description=description, ttl=ttl
        )
        token = await self.find(secret)
        assert token is not None
        return secret, token

    async def find(self, secret: str) -> ApiToken | None:
        """The token whose secret is ``secret`` (in any state), if there is one."""
        row = await self._store.find_token(digest(secret))
        return None if row is None else ApiToken.model_validate(row, from_attributes=True)

    async def get(self, token_id: str) -> ApiToken | None:
        row = await self._store.get_token(token_id)
        return None if row is None else ApiToken.model_validate(row, from_attributes=True)

    async def list(self, principal: str | None = None) -> list[ApiToken]:
        """Every token, or ``principal``'s, oldest first."""
        rows = await self._store.list_tokens(principal)
        return [ApiToken.model_validate(row, from_attributes=True) for row in rows]

    async def revoke(self, token_id: str, *, keep_one_of: str | None = None) -> None:
        """Revoke a token; with ``keep_one_of`` (a role), raise :class:`LastCredential`
        instead if it is the last active token with that role (checked and done in one
        transaction)."""
        await self._store.revoke_token(token_id, keep_one_of=keep_one_of)
