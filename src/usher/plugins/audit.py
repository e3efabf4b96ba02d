"""Audit log: every request — who asked, for what, on which VMs, from where, how it ended.

Config (``[plugins.audit]``): ``file`` — also append each record, every time it changes, as
one JSON line to this file (e.g. ``/var/log/usher/audit.jsonl``).

Query: ``GET /v1/audit?user=&vm=&since=&outcome=&limit=`` (action ``audit.list``; a principal
whose listings are scoped sees only its own requests), or ``ush audit``.

Built on the public hooks only. The ``request`` event (it carries the operation id and the
request) records a request as ``accepted``; each VM's ``<op>`` or ``<op>_failure`` event counts
towards ``succeeded`` or ``failed``. A refused request has no ``request`` event but an
``<op>_failure`` event with no VM: ``vetoed`` (a plugin said no, with its reason) or ``refused``
(a request plugin broke). Who asked from where for a refused request comes from this
plugin's own ``request`` hook, which sees every request before the others may refuse it (list
``audit`` first in ``plugins.enabled``). Dry runs are recorded by that hook as ``dry_run``.
Requests refused before they became operations (not allowed, unknown VMs, wrong state, no
capacity) come as the engine's ``request_refused`` event and are recorded as ``refused``.
Only a request without a valid token (or a malformed body) is not recorded: it names no one.

An attached console (``console_attach``, ``console_detach``) is one record of kind ``console``
on its VM: ``accepted`` while attached, ``succeeded`` once detached, its ``request`` saying
how long it lasted, how many bytes were typed (never what) and why it ended; an attach that
was not allowed (``console_refused``) is ``refused``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from usher.model import Event, OpKind, OpRequest, now
from usher.plugin import ContextDep, PluginContext, PrincipalDep, allow, hookimpl, visible

KINDS = frozenset(kind.value for kind in OpKind)
CONSOLE_EVENTS = frozenset({"console_attach", "console_detach", "console_refused"})
PENDING_SECONDS = 60.0  # how long a request may wait for its refusal event to arrive
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    VETOED = "vetoed"
    REFUSED = "refused"
    DRY_RUN = "dry_run"


# --- tables (the plugin's own schema, created at start) -----------------------------------


class AuditBase(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON}


class AuditRow(AuditBase):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    operation_id: Mapped[str | None] = mapped_column(String(40), index=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    principal: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    cluster: Mapped[str | None] = mapped_column(String(80))
    client_address: Mapped[str | None] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(20), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean)
    request: Mapped[dict[str, Any]]
    total: Mapped[int] = mapped_column(Integer)
    done: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[float | None] = mapped_column(Float)


class AuditTargetRow(AuditBase):
    __tablename__ = "audit_targets"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    entry: Mapped[int] = mapped_column(ForeignKey("audit_log.seq"), index=True)
    vm_id: Mapped[str] = mapped_column(String(40), index=True)
    vm_name: Mapped[str | None] = mapped_column(String(80), index=True)


# --- what the API answers -----------------------------------------------------------------


class AuditEntry(BaseModel):
    """One request as the audit log knows it."""

    seq: int
    operation_id: str | None
    time: float
    principal: str
    kind: str
    vms: list[str] = Field(description="target VM ids")
    vm_names: list[str]
    cluster: str | None
    client_address: str | None
    outcome: Outcome
    reason: str | None = Field(description="why it was vetoed, refused or failed")
    dry_run: bool
    request: dict[str, Any] = Field(description="the rest of the request: kwargs, spec, …")
    total: int
    done: int
    failed: int
    finished_at: float | None


class AuditPage(BaseModel):
    items: list[AuditEntry]


@dataclass
class _Pending:
    """A request seen by the ``request`` hook, waiting for its event."""

    principal: str
    seen: float
    data: dict[str, Any]


REQUEST_KEYS = ("cluster", "client_address", "dry_run")
DETAIL_EXCLUDE = {"kind", "vm_ids", "principal", *REQUEST_KEYS}


class Audit:
    """The ``audit`` plugin."""

    ctx: PluginContext
    sessions: async_sessionmaker[AsyncSession]
    file: Path | None = None

    def __init__(self) -> None:
        self._pending: deque[_Pending] = deque(maxlen=10000)
        self._consoles: dict[str, int] = {}
        """The record of each attached console session, by session id."""

    @hookimpl
    async def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.file = Path(config["file"]) if config.get("file") else None
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        async with ctx.database.begin() as conn:
            await conn.run_sync(AuditBase.metadata.create_all)
        self.sessions = async_sessionmaker(ctx.database, expire_on_commit=False)

    @hookimpl
    def usher_routes(self) -> list[APIRouter]:
        router = APIRouter(prefix="/audit", tags=["audit"])

        @router.get("")
        async def list_audit(
            ctx: ContextDep,
            principal: PrincipalDep,
            user: str | None = None,
            vm: str | None = Query(None, description="a VM id or name"),
            since: float | None = Query(None, description="epoch seconds"),
            outcome: Outcome | None = None,
            limit: int = Query(100, ge=1, le=1000),
        ) -> AuditPage:
            """The latest requests (oldest of them first), filtered."""
            await allow(ctx, principal, "audit.list")
            scope = await visible(ctx, principal)
            users = None if scope is None else scope.principals
            return AuditPage(items=await self.query(user, vm, since, outcome, limit, users))

        return [router]

    # --- recording -----------------------------------------------------------------------

    @hookimpl
    async def request(self, request: OpRequest) -> None:
        data = request.model_dump(mode="json", exclude={"principal"})
        if request.dry_run:
            await self._insert(None, request.principal.name, data, Outcome.DRY_RUN, None)
        else:
            self._pending.append(_Pending(request.principal.name, time.monotonic(), data))

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        if event.name == "request_refused":
            await self._refused_early(event)
            return
        if event.name in CONSOLE_EVENTS:
            await self._console(event)
            return
        if event.operation_id is None:
            return
        name = event.name
        if name == "request":
            self._take(event.principal, event.data)
            await self._insert(
                event.operation_id, event.principal or "", event.data, Outcome.ACCEPTED, None
            )
        elif name == "register" and event.vm_id:
            await self._registered(event.operation_id, event.vm_id, event.data.get("name"))
        elif name.endswith("_failure") and name.removesuffix("_failure") in KINDS:
            if event.vm_id:
                await self._step(event.operation_id, str(event.data.get("error", "")))
            else:
                await self._refused(event.operation_id, event)
        elif name in KINDS and event.vm_id:
            await self._step(event.operation_id, None)

    async def _refused_early(self, event: Event) -> None:
        """Refused before it became an operation: not allowed, unknown VM, wrong state, no
        capacity, a name taken (the engine's ``request_refused`` event)."""
        asked = dict(event.data.get("request") or {})
        data = {
            "kind": event.data.get("kind", "?"),
            "client_address": event.data.get("client_address"),
            "cluster": asked.get("cluster"),
            **{k: v for k, v in asked.items() if k not in ("cluster",)},
        }
        await self._insert(
            None, event.principal or "", data, Outcome.REFUSED, str(event.data.get("error", ""))
        )

    async def _console(self, event: Event) -> None:
        """An attached console: a record when it starts, finished when it ends."""
        data = event.data
        if event.name == "console_refused":
            asked = {
                "kind": "console",
                "vm": data.get("vm"),
                "client_address": data.get("client_address"),
            }
            await self._insert(
                None, event.principal or "", asked, Outcome.REFUSED, data.get("error")
            )
            return
        session = str(data.get("session"))
        if event.name == "console_attach":
            asked = {
                "kind": "console",
                "vm_ids": [event.vm_id] if event.vm_id else [],
                "client_address": data.get("client_address"),
                "session": session,
                "read_only": data.get("read_only"),
            }
            self._consoles[session] = await self._insert(
                None, event.principal or "", asked, Outcome.ACCEPTED, None
            )
            return
        seq = self._consoles.pop(session, None)
        if seq is None:
            return
        async with self.sessions() as s, s.begin():
            row = await s.get(AuditRow, seq)
            if row is None:
                return
            ended = {k: data.get(k) for k in ("seconds", "bytes_typed", "code")}
            row.request = {**row.request, **ended}
            row.outcome, row.reason = Outcome.SUCCEEDED, data.get("reason")
            row.done, row.finished_at = row.total, event.time
        await self._log(seq)

    def _take(self, principal: str | None, data: dict[str, Any]) -> _Pending | None:
        """The oldest pending request of ``principal`` like ``data`` (any of its kind if
        ``data`` has only the kind); stale ones are dropped on the way."""
        while self._pending and time.monotonic() - self._pending[0].seen > PENDING_SECONDS:
            self._pending.popleft()
        for pending in self._pending:
            mine = pending.principal == principal and pending.data["kind"] == data["kind"]
            if mine and all(
                pending.data.get(k) == data[k] for k in ("vm_ids", *REQUEST_KEYS) if k in data
            ):
                self._pending.remove(pending)
                return pending
        return None

    async def _refused(self, op_id: str, event: Event) -> None:
        """An operation ended without running: refused by a request hook, or cut short."""
        vetoed = bool(event.data.get("vetoed"))
        error = str(event.data.get("error", ""))
        async with self.sessions() as s, s.begin():
            row = await self._row(s, op_id)
            if row is not None:  # accepted, then refused (an address plugin) or cut short
                row.outcome = Outcome.VETOED if vetoed else Outcome.FAILED
                row.reason, row.finished_at = error, event.time
        if row is not None:
            await self._log(row.seq)
            return
        kind = event.name.removesuffix("_failure")
        pending = self._take(event.principal, {"kind": kind})
        if pending is not None:
            data = pending.data
        else:  # a plugin before this one refused it: the operation record names the targets
            op = await self.ctx.records.get_op(op_id)
            data = {"kind": kind, "vm_ids": op.targets if op else []}
        outcome = Outcome.VETOED if vetoed else Outcome.REFUSED
        await self._insert(op_id, event.principal or "", data, outcome, error)

    async def _insert(
        self,
        op_id: str | None,
        principal: str,
        data: dict[str, Any],
        outcome: Outcome,
        reason: str | None,
    ) -> int:
        """Record a request; its record's number."""
        # every VM named: those acted on, and those left alone (already there, or refused)
        vm_ids = [*data.get("vm_ids", []), *data.get("skipped", []), *data.get("refused", [])]
        vms = await self.ctx.records.get_vms(vm_ids) if vm_ids else {}
        row = AuditRow(
            operation_id=op_id,
            time=now(),
            principal=principal,
            kind=data["kind"],
            cluster=data.get("cluster"),
            client_address=data.get("client_address"),
            outcome=outcome,
            reason=reason,
            dry_run=bool(data.get("dry_run")),
            request={k: v for k, v in data.items() if k not in DETAIL_EXCLUDE},
            total=len(vm_ids),
            done=0,
            failed=0,
            finished_at=None if outcome == Outcome.ACCEPTED else now(),
        )
        async with self.sessions() as s, s.begin():
            s.add(row)
            await s.flush()
            s.add_all(
                AuditTargetRow(entry=row.seq, vm_id=i, vm_name=vms[i].name if i in vms else None)
                for i in vm_ids
            )
        await self._log(row.seq)
        return row.seq

    async def _registered(self, op_id: str, vm_id: str, name: str | None) -> None:
        """A start created a VM: one more target."""
        async with self.sessions() as s, s.begin():
            row = await self._row(s, op_id)
            if row is None:
                return
            row.total += 1
            s.add(AuditTargetRow(entry=row.seq, vm_id=vm_id, vm_name=name))

    async def _step(self, op_id: str, error: str | None) -> None:
        """One VM's part of an operation ended (``error`` None: it succeeded)."""
        async with self.sessions() as s, s.begin():
            row = await self._row(s, op_id)
            if row is None:
                return
            if error is None:
                row.done += 1
            else:
                row.failed += 1
                row.reason = row.reason or error
            if row.done + row.failed < row.total:
                return
            row.outcome = Outcome.FAILED if row.failed else Outcome.SUCCEEDED
            row.finished_at = now()
        await self._log(row.seq)

    @staticmethod
    async def _row(s: AsyncSession, op_id: str) -> AuditRow | None:
        stmt = select(AuditRow).where(AuditRow.operation_id == op_id).limit(1)
        return (await s.execute(stmt)).scalar_one_or_none()

    async def _log(self, seq: int) -> None:
        """Append the record as it now is to the JSON-lines file, if there is one."""
        if self.file is None:
            return
        entry = (await self._entries(select(AuditRow).where(AuditRow.seq == seq)))[0]
        line = entry.model_dump_json() + "\n"
        await asyncio.to_thread(_append, self.file, line)

    # --- querying ------------------------------------------------------------------------

    async def query(
        self,
        user: str | None,
        vm: str | None,
        since: float | None,
        outcome: Outcome | None,
        limit: int,
        users: list[str] | None = None,
    ) -> list[AuditEntry]:
        """The latest ``limit`` records matching the filters, oldest first; ``users`` limits
        them to requests of those principals."""
        stmt = select(AuditRow)
        if user is not None:
            stmt = stmt.where(AuditRow.principal == user)
        if users is not None:
            stmt = stmt.where(AuditRow.principal.in_(users))
        if vm is not None:
            targets = select(AuditTargetRow.entry).where(
                or_(AuditTargetRow.vm_id == vm, AuditTargetRow.vm_name == vm)
            )
            stmt = stmt.where(AuditRow.seq.in_(targets))
        if since is not None:
            stmt = stmt.where(AuditRow.time >= since)
        if outcome is not None:
            stmt = stmt.where(AuditRow.outcome == outcome.value)
        entries = await self._entries(stmt.order_by(AuditRow.seq.desc()).limit(limit))
        return entries[::-1]

    async def _entries(self, stmt: Any) -> list[AuditEntry]:
        async with self.sessions() as s:
            rows = (await s.execute(stmt)).scalars().all()
            seqs = [row.seq for row in rows]
            found = select(AuditTargetRow).where(AuditTargetRow.entry.in_(seqs))
            targets = (await s.execute(found.order_by(AuditTargetRow.seq))).scalars().all()
        by_entry: dict[int, list[AuditTargetRow]] = {}
        for target in targets:
            by_entry.setdefault(target.entry, []).append(target)
        return [_entry(row, by_entry.get(row.seq, [])) for row in rows]


def _entry(row: AuditRow, targets: list[AuditTargetRow]) -> AuditEntry:
    return AuditEntry(
        seq=row.seq,
        operation_id=row.operation_id,
        time=row.time,
        principal=row.principal,
        kind=row.kind,
        vms=[t.vm_id for t in targets],
        vm_names=[t.vm_name for t in targets if t.vm_name],
        cluster=row.cluster,
        client_address=row.client_address,
        outcome=Outcome(row.outcome),
        reason=row.reason,
        dry_run=row.dry_run,
        request=row.request,
        total=row.total,
        done=row.done,
        failed=row.failed,
        finished_at=row.finished_at,
    )


def _append(path: Path, line: str) -> None:
    """Append to the audit file, which only its owner may read (whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(line)
