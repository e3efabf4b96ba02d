"""Models to rows and rows to pages: what every table's repository shares."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from usher.ctrl.tables import Base
from usher.model import Page

MAX_PAGE = 1000


def row_values(model: Any, row_cls: type[Base]) -> dict[str, Any]:
    """The columns of ``row_cls`` (but ``seq``) from a model, as the database takes them."""
    return model.model_dump(mode="json", include=_columns_of(type(model), row_cls))


@functools.cache
def _columns_of(model_cls: type[Any], row_cls: type[Base]) -> frozenset[str] | None:
    """What to dump of a ``model_cls`` for ``row_cls``: None if it is every field (a dump
    told which fields to include takes twice as long)."""
    columns = frozenset(row_cls.__table__.columns.keys()) - {"seq"}
    return None if columns == frozenset(model_cls.model_fields) else columns


def page(items: list[Any], seqs: Sequence[int], limit: int, total: int) -> Page[Any]:
    """One page of ``limit`` items out of ``items`` (one more was fetched to tell whether
    another page follows); the cursor is the row number ``seq`` of its last item."""
    more = len(seqs) > limit
    return Page(items=items[:limit], total=total, next=str(seqs[limit - 1]) if more else None)


def page_size(limit: int) -> int:
    """A page's size as asked, within 1 and the largest page."""
    return max(1, min(limit, MAX_PAGE))


def cursor(value: str | None) -> int | None:
    """The ``seq`` a page's cursor (the ``next`` of the page before) names, if any."""
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        raise ValueError(f"invalid cursor {value[:40]!r}: pass back the 'next' of a page")
    return int(value)
