"""At open, records that do not read back are moved aside instead of stopping the controller.

Every value is bounded at the edge it enters and the store writes only JSON that reads back
identically, so new records are always readable. A database written by an older release (or
changed by hand) may still hold one that is not: a VM whose ``kwargs`` hold an integer beyond
64 bits, say. Such a record would fail every read of it, and the controller's start with it.
:func:`sweep` reads the tables the controller loads at start, row by row, and moves each row
that fails to parse or to validate into the ``quarantine`` table (whole, as text, with the
error), so the controller starts with everything else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import JSON, Table, Text, cast, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from usher.ctrl.tables import NodeRow, OperationRow, PluginDataRow, QuarantineRow, TokenRow, VMRow
from usher.model import VM, Node, Operation, OpStatus, now

log = logging.getLogger("usher.store")

_ROLES = TypeAdapter(list[str])


@dataclass(frozen=True)
class Quarantined:
    table: str
    key: str
    error: str


def _parses(row: dict[str, Any]) -> None:
    """Nothing beyond parsing strictly (done for every row)."""


def _token(row: dict[str, Any]) -> None:
    _ROLES.validate_python(row["roles"])


# table -> (the columns that identify a row, how a row is checked, which rows to read)
CHECKS: list[tuple[Table, tuple[str, ...], Callable[[dict[str, Any]], Any], Any]] = [
    (VMRow.__table__, ("id",), VM.model_validate, None),
    (NodeRow.__table__, ("name",), Node.model_validate, None),
    (TokenRow.__table__, ("id",), _token, None),
    (PluginDataRow.__table__, ("plugin", "key"), _parses, None),
    (
        OperationRow.__table__,
        ("id",),
        Operation.model_validate,
        OperationRow.status.in_([OpStatus.QUEUED.value, OpStatus.RUNNING.value]),
    ),
]


def _is_json(column: Any) -> bool:
    return isinstance(column.type, JSON)


def _parsed(table: Table, raw: dict[str, Any]) -> dict[str, Any]:
    """The row with its JSON columns parsed as the store's reader would (strictly)."""
    row = dict(raw)
    for column in table.columns:
        value = row.get(column.name)
        if _is_json(column) and isinstance(value, str | bytes):
            row[column.name] = orjson.loads(value)
    return row


async def sweep(conn: AsyncConnection) -> list[Quarantined]:
    """Move every unreadable row of the tables loaded at start into ``quarantine``."""
    found: list[Quarantined] = []
    for table, keys, check, where in CHECKS:
        # JSON columns as the text stored, so that reading cannot fail before the check
        stmt = select(*[cast(c, Text).label(c.name) if _is_json(c) else c for c in table.columns])
        if where is not None:
            stmt = stmt.where(where)
        for raw in (await conn.execute(stmt)).mappings():
            row = dict(raw)
            try:
                check(_parsed(table, row))
            except (ValueError, TypeError, ValidationError) as exc:
                key = "/".join(str(row[k]) for k in keys)
                error = (str(exc) or type(exc).__name__).splitlines()[0][:2000]
                await conn.execute(
                    QuarantineRow.__table__.insert().values(
                        table=table.name,
                        key=key,
                        row=json.dumps(row, default=str)[: 1 << 20],
                        error=error,
                        at=now(),
                    )
                )
                await conn.execute(delete(table).where(*[table.c[k] == row[k] for k in keys]))
                log.error("quarantined the %s record %s: %s", table.name, key, error)
                found.append(Quarantined(table.name, key, error))
    return found
