"""The Usher client API: what every client of the controller uses.

>>> from usher.client import Client
>>> with Client() as usher:                      # URL and token from env or ~/.usher
...     op = usher.create_vms(count=4, cluster="web")
...     op = usher.wait(op, on_progress=print)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usher.client.errors import UsherConnectionError, UsherError
from usher.client.sync import Client

if TYPE_CHECKING:
    from usher.client.async_ import AsyncClient

__all__ = ["AsyncClient", "Client", "UsherConnectionError", "UsherError"]


def __getattr__(name: str) -> Any:
    """``AsyncClient`` loads on first use (``ush`` needs only the blocking one)."""
    if name == "AsyncClient":
        from usher.client.async_ import AsyncClient

        return AsyncClient
    raise AttributeError(f"module 'usher.client' has no attribute {name!r}")
