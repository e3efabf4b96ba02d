"""JSON on the controller's hot paths: the messages of its WebSocket link to the LNMs and
the JSON columns of its database (orjson: a VM step sends a message and writes rows, and the
standard library's encoder was a visible share of the controller's time)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(message: Any) -> str:
    """One message (or column value) as JSON text. What orjson cannot write, such as an
    integer beyond 64 bits in a user's kwargs, goes through the standard library."""
    try:
        return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(message)


def loads(text: str | bytes) -> Any:
    """Like :func:`json.loads`, down to the TypeError for what is not text (SQLAlchemy's
    SQLite dialect relies on it to pass plain numbers through)."""
    if not isinstance(text, str | bytes | bytearray):
        raise TypeError(f"JSON must be str or bytes, not {type(text).__name__}")
    return orjson.loads(text)
