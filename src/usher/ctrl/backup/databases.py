"""Dumping and restoring the controller's database: SQLite through its online backup API,
PostgreSQL through ``pg_dump`` and ``pg_restore`` + ``psql`` (PostgreSQL's client tools).

Both dumps are consistent while the controller writes: SQLite's backup copies one read
transaction's snapshot (WAL mode lets writers go on), ``pg_dump`` reads one snapshot too.
A PostgreSQL restore runs in a single transaction, so a failure leaves the database as it
was.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, make_url, text

from usher.ctrl.backup.archive import BadBackup
from usher.ctrl.store import schema


class RestoreRefused(Exception):
    """The backup cannot go into this controller's database; the message says why."""


def kind(url: str) -> str:
    """``sqlite`` or ``postgresql``, by the controller's database URL."""
    if url.startswith("sqlite"):
        return "sqlite"
    if url.startswith(("postgresql", "postgres")):
        return "postgresql"
    raise RestoreRefused(f"backups handle SQLite and PostgreSQL, not {url.split(':')[0]}")


def sqlite_path(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def _sync_url(url: str) -> str:
    """The URL for a plain (not async) SQLAlchemy engine."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return parsed.set(drivername="sqlite").render_as_string(hide_password=False)


def check_revision(revision: str | None) -> None:
    """Refuse a schema revision this Usher does not know (a backup of a newer release)."""
    if revision is None:
        return  # from before Alembic: the baseline revision upgrades it
    try:
        ScriptDirectory.from_config(schema.config()).get_revision(revision)
    except CommandError:
        raise RestoreRefused(
            f"the backup's database schema revision {revision!r} is unknown to this Usher "
            "(a backup of a newer release? restore it with that release)"
        ) from None


def upgrade(url: str) -> None:
    """Bring a restored database to this Usher's schema (what a controller start would)."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.begin() as conn:
            schema.upgrade(conn)
    finally:
        engine.dispose()


# --- SQLite ------------------------------------------------------------------------------


def sqlite_dump(db: Path, out: Path) -> str | None:
    """Copy the live database ``db`` to ``out`` (one consistent snapshot); its revision."""
    if not db.is_file():
        raise FileNotFoundError(f"no database at {db}")
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(out)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    return sqlite_check(out)


def sqlite_check(path: Path) -> str | None:
    """The schema revision of the SQLite file ``path``, after checking it is whole."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (result,) = conn.execute("PRAGMA integrity_check").fetchone()
            if result != "ok":
                raise BadBackup(f"the backup's SQLite database is damaged: {result}")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if "vms" not in tables:
                raise BadBackup("the backup's database holds no Usher tables")
            if "alembic_version" not in tables:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return str(row[0]) if row else None
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BadBackup(f"the backup's database is not a readable SQLite file: {exc}") from None


# --- PostgreSQL --------------------------------------------------------------------------


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A URL for PostgreSQL's tools (no driver suffix, no password) and their environment
    (the password in PGPASSWORD, so it is not on a command line)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(args: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RestoreRefused(
            f"{args[0]} is not installed: it comes with PostgreSQL's client tools "
            "(Debian: postgresql-client)"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed: {done.stderr.strip()[-2000:]}")
    return done


def pg_state(url: str) -> tuple[str, str | None, list[str]]:
    """The schema the controller's tables live in, their revision, and its tables."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as conn:
            current = str(conn.execute(text("SELECT current_schema()")).scalar_one())
            tables = [
                str(t)
                for t in conn.execute(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = :s"), {"s": current}
                ).scalars()
            ]
            revision = None
            if "alembic_version" in tables:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        return current, revision, tables
    finally:
        engine.dispose()


def pg_dump(url: str, out: Path) -> tuple[str, str | None]:
    """Dump the controller's tables to ``out`` (pg_dump's custom format, one snapshot);
    returns their schema and revision."""
    where, revision, tables = pg_state(url)
    if "vms" not in tables:
        raise RuntimeError(f"the database has no Usher tables in schema {where}")
    plain, env = _libpq(url)
    args = ["pg_dump", "--format=custom", "--no-owner", "--no-privileges"]
    args += [f"--table={_quoted(where)}.*", f"--file={out}", plain]
    _tool(args, env, "pg_dump")
    return where, revision


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_restore(url: str, dump: Path, dumped_schema: str | None) -> None:
    """Replace the controller's tables by those of ``dump``, in one transaction."""
    where, _, tables = pg_state(url)
    if dumped_schema is not None and dumped_schema != where:
        raise RestoreRefused(
            f"the backup is of schema {dumped_schema!r}, this config's database uses "
            f"{where!r}: restore into a database (or search_path) with that schema"
        )
    plain, env = _libpq(url)
    try:
        sql = _tool(
            ["pg_restore", "--no-owner", "--no-privileges", "--file=-", str(dump)],
            env,
            "reading the PostgreSQL dump",
        ).stdout
    except RuntimeError as exc:
        raise BadBackup(str(exc)) from None
    drops = "".join(
        f"DROP TABLE IF EXISTS {_quoted(where)}.{_quoted(t)} CASCADE;\n" for t in tables
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", dir=dump.parent) as script:
        script.write(drops + sql)
        script.flush()
        args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
        args += ["-f", script.name, plain]
        _tool(args, env, "restoring into PostgreSQL")
