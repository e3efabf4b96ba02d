"""How LNMs join: admin-issued join tokens, then one credential per node.

Both live in the token table as SHA-256 digests only, with the role ``node`` alone (so the
user API refuses them). A join token's principal is :data:`JOIN_PRINCIPAL`; it expires and
has a number of uses, counted in plugin data. A node credential's principal is
``node:<name>``: it is bound to that node name and valid until revoked.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from usher.ctrl.store import Store
from usher.ctrl.tables import TokenRow
from usher.ctrl.tokens import digest, issue_token
from usher.model import Capacity, now

JOIN_PRINCIPAL = "node-join"
USES = "nodecreds"  # plugin-data namespace: join token id → uses left
ROLES = ["node"]


class NodeRefused(Exception):
    """The LNM may not join; the message (no secrets in it) says why."""


@dataclass(frozen=True)
class JoinToken:
    id: str
    token: str
    expires_at: float
    uses: int


def credential_principal(node: str) -> str:
    return f"node:{node}"


class NodeCredentials:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = asyncio.Lock()
        self._caps: dict[str, Capacity | None] = {}  # cap_of, by node

    async def issue_join_token(
        self, ttl: float, uses: int, max_capacity: Capacity | None = None
    ) -> JoinToken:
        """A join token for ``uses`` nodes; ``max_capacity`` caps what they may claim."""
        secret = await issue_token(
            self.store, JOIN_PRINCIPAL, ROLES, description=f"join token, {uses} use(s)", ttl=ttl
        )
        row = await self.store.find_token(digest(secret))
        assert row is not None and row.expires_at is not None
        await self.store.plugin_set(USES, row.id, uses)
        if max_capacity is not None:
            await self.store.plugin_set(USES, f"cap:{row.id}", max_capacity.model_dump())
        return JoinToken(row.id, secret, row.expires_at, uses)

    async def known(self, secret: str | None) -> TokenRow | None:
        """The token ``secret`` is if it is a node credential or a join token at all (checked
        before a connection's hello is read: a stranger is refused without being listened
        to); hand it to :meth:`admit`, which then need not read it again."""
        if not secret:
            return None
        row = await self.store.find_token(digest(secret))
        return row if row is not None and row.roles == ROLES else None

    async def cap_of(self, node: str) -> Capacity | None:
        """The capacity limit the join token of ``node`` set, if it set one (read once: it
        is set when the node joins, through this object)."""
        if node not in self._caps:
            found = await self.store.plugin_get(USES, f"cap-node:{node}")
            self._caps[node] = Capacity.model_validate(found) if found else None
        return self._caps[node]

    async def admit(self, secret: str | None, node: str, row: TokenRow | None = None) -> str | None:
        """Check what ``node`` presents (``row``: its token as :meth:`known` found it). A
        valid credential of this node: None. A valid join token: a new credential for the
        node, returned once. Anything else: NodeRefused."""
        if not secret:
            raise NodeRefused("no credential and no join token")
        if row is None or row.digest != digest(secret):
            row = await self.store.find_token(digest(secret))
        if row is None or row.roles != ROLES:
            raise NodeRefused("unknown credential or join token")
        if row.principal != JOIN_PRINCIPAL:
            _check_credential(row, node)
            return None
        async with self._lock:
            return await self._join(row, node)

    async def _join(self, row: TokenRow, node: str) -> str:
        uses = int(await self.store.plugin_get(USES, row.id, 0))
        if row.revoked:
            raise NodeRefused("the join token was revoked")
        if row.expires_at is not None and row.expires_at <= now():
            raise NodeRefused("the join token has expired")
        if uses <= 0:
            raise NodeRefused("the join token has been used up")
        if any(not r.revoked for r in await self.store.list_tokens(credential_principal(node))):
            raise NodeRefused(f"node {node} already has a credential (revoke it to rejoin)")
        await self.store.plugin_set(USES, row.id, uses - 1)
        cap = await self.store.plugin_get(USES, f"cap:{row.id}")
        await self.store.plugin_set(USES, f"cap-node:{node}", cap)
        self._caps.pop(node, None)
        return await issue_token(
            self.store, credential_principal(node), ROLES, description=f"credential of {node}"
        )

    async def revoke(self, node: str) -> int:
        """Revoke every credential of ``node``; how many there were."""
        rows = [
            r for r in await self.store.list_tokens(credential_principal(node)) if not r.revoked
        ]
        for row in rows:
            await self.store.revoke_token(row.id)
        return len(rows)


def _check_credential(row: TokenRow, node: str) -> None:
    if row.principal != credential_principal(node):
        raise NodeRefused(f"the credential is not node {node}'s")
    if row.revoked:
        raise NodeRefused(f"the credential of node {node} was revoked")
    if row.expires_at is not None and row.expires_at <= now():
        raise NodeRefused(f"the credential of node {node} has expired")
