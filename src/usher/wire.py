"""JSON on the controller's hot paths: the messages of its WebSocket link to the LNMs and
the JSON columns of its database (orjson: a VM step sends a message and writes rows, and the
standard library's encoder was a visible share of the controller's time)."""

from __future__ import annotations

import json
from typing import Any

import orjson


class Unwritable(ValueError):
    """A value that would not read back identically as JSON (an integer beyond 64 bits, a
    key that is not text): refused rather than written."""


def dumps(message: Any) -> str:
    """One message (or column value) as JSON text. What orjson cannot write is refused
    (:class:`Unwritable`): it would not read back (limits at the edges keep it out; this is
    the last line, so that nothing unreadable is ever stored)."""
    try:
        return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError as exc:
        raise Unwritable(f"cannot write as JSON: {exc}") from None


def loads(text: str | bytes) -> Any:
    """Like :func:`json.loads`, down to the TypeError for what is not text (SQLAlchemy's
    SQLite dialect relies on it to pass plain numbers through). Text that orjson refuses
    (rows an older release wrote with integers beyond 64 bits) is read by the standard
    library, so it can be shown and quarantined instead of breaking every read."""
    if not isinstance(text, str | bytes | bytearray):
        raise TypeError(f"JSON must be str or bytes, not {type(text).__name__}")
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
