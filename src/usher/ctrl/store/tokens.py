"""The ``tokens`` table: API tokens (only their digests), with lookups remembered briefly."""

from __future__ import annotations

import time

from sqlalchemy import false, select, update

from usher.ctrl.store.database import Database
from usher.ctrl.tables import TokenRow
from usher.model import now

TOKEN_CACHE_SECONDS = 5.0


class LastCredential(Exception):
    """The token is the last active one with a role that must not be left without one."""


def _active(row: TokenRow) -> bool:
    return not row.revoked and (row.expires_at is None or row.expires_at > now())


class Tokens:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._found: dict[str, tuple[float, TokenRow]] = {}  # digest -> (when read, token)

    async def add_token(self, row: TokenRow) -> None:
        async with self._db.write() as s:
            s.add(row)

    async def find_token(self, digest: str) -> TokenRow | None:
        """The token with this digest. Every API request looks its token up, so one found is
        remembered for :data:`TOKEN_CACHE_SECONDS`; a revocation (:meth:`revoke_token`)
        forgets them all, and expiry is checked by the caller on each use."""
        hit = self._found.get(digest)
        if hit is not None and time.monotonic() - hit[0] < TOKEN_CACHE_SECONDS:
            return hit[1]
        async with self._db.sessions() as s:
            stmt = select(TokenRow).where(TokenRow.digest == digest)
            row = (await s.execute(stmt)).scalar_one_or_none()
        if row is not None:
            if len(self._found) >= 10_000:
                self._found.clear()
            self._found[digest] = (time.monotonic(), row)
        return row

    async def tokens_with_role(self, role: str) -> list[TokenRow]:
        async with self._db.sessions() as s:
            rows = (await s.execute(select(TokenRow))).scalars()
            return [r for r in rows if role in r.roles]

    async def get_token(self, token_id: str) -> TokenRow | None:
        async with self._db.sessions() as s:
            return await s.get(TokenRow, token_id)

    async def list_tokens(self, principal: str | None = None) -> list[TokenRow]:
        """Tokens (revoked and expired ones too), oldest first; only ``principal``'s if given."""
        stmt = select(TokenRow).order_by(TokenRow.created_at, TokenRow.id)
        if principal is not None:
            stmt = stmt.where(TokenRow.principal == principal)
        async with self._db.sessions() as s:
            return list((await s.execute(stmt)).scalars())

    async def revoke_token(self, token_id: str, *, keep_one_of: str | None = None) -> None:
        """Revoke a token. With ``keep_one_of``, refuse (:class:`LastCredential`) when it is
        the last active token with that role: the check and the revocation are one
        transaction with the role's tokens locked, so two at once cannot both pass."""
        self._found.clear()
        async with self._db.write() as s:
            if keep_one_of is not None:
                stmt = select(TokenRow).where(TokenRow.revoked == false())
                if not self._db.is_sqlite:  # (SQLite: the store's write lock serializes)
                    stmt = stmt.with_for_update()
                rows = (await s.execute(stmt)).scalars().all()
                holders = [r for r in rows if keep_one_of in r.roles and _active(r)]
                if [r.id for r in holders] == [token_id]:
                    raise LastCredential(f"token {token_id} is the last {keep_one_of} credential")
            await s.execute(update(TokenRow).where(TokenRow.id == token_id).values(revoked=True))
        self._found.clear()  # a lookup may have raced the write
