"""API tokens: random secrets stored only as their SHA-256 digest."""

from __future__ import annotations

import hashlib
import secrets

from usher.ctrl.store import Store
from usher.ctrl.tables import TokenRow
from usher.model import new_id, now


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_token(
    store: Store,
    principal: str,
    roles: list[str],
    *,
    description: str = "",
    ttl: float | None = None,
) -> str:
    """Create a token for ``principal`` and return its secret; only the digest is kept."""
    secret = "ush_" + secrets.token_urlsafe(32)
    created = now()
    await store.add_token(
        TokenRow(
            id=new_id("tok"),
            principal=principal,
            roles=roles,
            digest=digest(secret),
            description=description,
            created_at=created,
            expires_at=created + ttl if ttl else None,
            revoked=False,
        )
    )
    return secret
