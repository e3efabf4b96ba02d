"""``usher backup`` and ``usher restore``: what goes into a backup and how it comes back.

A backup holds the database (see :mod:`.databases`) and the state dir's files that are
state: the admin token, the generated TLS CA and server certificate with their keys, and
whatever a plugin keeps there, but not the database's own files, the lock, earlier
pre-restore copies or what the controller makes again at each start (``dnsmasq/``, from
the records). A restore checks the whole file before it changes anything, holds the state
dir's lock (so no controller runs on it meanwhile), keeps the state it replaces as a
backup file beside it, and brings the database to this Usher's schema.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import usher
from usher.ctrl.backup import archive, databases
from usher.ctrl.backup.archive import DATABASE, FILES, BadBackup, Manifest
from usher.ctrl.backup.databases import RestoreRefused
from usher.ctrl.config import Settings
from usher.ctrl.restore_window import MARKER, mark_restored
from usher.ctrl.statelock import LOCK_FILE, StateLock

Progress = Callable[[str], None]
PRE_RESTORE = "pre-restore-"  # the state a restore replaced, kept in the state dir
NOT_STATE = {LOCK_FILE, "dnsmasq", MARKER}  # top-level names of the state dir never backed up
WORK_PREFIX = ".usher-backup-"


def state_files(settings: Settings, skip: set[Path]) -> dict[str, Path]:
    """The state dir's files a backup holds: member name -> file."""
    state = settings.state_dir
    db_files: set[Path] = set()
    if databases.kind(settings.db_url) == "sqlite":
        db = databases.sqlite_path(settings.db_url)
        db_files = {Path(f"{db}{suffix}").resolve() for suffix in ("", "-wal", "-shm", "-journal")}
    found: dict[str, Path] = {}
    for path in sorted(state.rglob("*")):
        rel = path.relative_to(state)
        top = rel.parts[0]
        if top in NOT_STATE or top.startswith((PRE_RESTORE, WORK_PREFIX, ".")):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        if path.resolve() in db_files or path.resolve() in skip:
            continue
        found[FILES + rel.as_posix()] = path
    return found


def backup(settings: Settings, target: Path, progress: Progress) -> dict[str, Any]:
    """Write a backup of the controller's state to ``target``; its summary."""
    target = target.absolute()
    if target.is_dir():
        raise OSError(f"{target} is a directory: name the backup file")
    if not target.parent.is_dir():
        raise OSError(f"cannot write {target}: there is no directory {target.parent}")
    db_kind = databases.kind(settings.db_url)
    try:
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=target.parent))
    except OSError as exc:
        raise OSError(f"cannot write {target}: {exc.strerror or exc}") from None
    with _removed(work):
        dump = work / "database"
        pg_schema = None
        if db_kind == "sqlite":
            progress(f"copying the SQLite database {databases.sqlite_path(settings.db_url)}")
            revision = databases.sqlite_dump(databases.sqlite_path(settings.db_url), dump)
        else:
            progress("dumping the PostgreSQL database (pg_dump)")
            pg_schema, revision = databases.pg_dump(settings.db_url, dump)
        files = state_files(settings, skip={target.resolve()})
        progress(f"adding {len(files)} file(s) of the state dir {settings.state_dir}")
        manifest = Manifest(
            usher_version=usher.__version__,
            database=db_kind,
            schema_revision=revision,
            pg_schema=pg_schema,
        )
        size = archive.write(target, manifest, {DATABASE: dump, **files})
    progress(f"wrote {target} ({size} bytes)")
    return {
        "file": str(target),
        "size": size,
        "database": db_kind,
        "schema_revision": revision,
        "files": sorted(name.removeprefix(FILES) for name in files),
        "usher_version": usher.__version__,
        "created_at": manifest.created_at,
    }


def restore(
    settings: Settings, source: Path, progress: Progress, keep: bool = True
) -> dict[str, Any]:
    """Put the state of backup ``source`` in place of this controller's; its summary.
    Raises :class:`BadBackup`, :class:`RestoreRefused` or
    :class:`~usher.ctrl.statelock.StateLocked` before changing anything."""
    state = settings.state_dir
    if not source.is_file():
        raise BadBackup(f"no backup file {source}")
    db_kind = databases.kind(settings.db_url)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = StateLock(state, "usher restore")
    lock.acquire()
    try:
        with _removed(Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=state))) as work:
            progress(f"checking {source}")
            manifest, members = _checked(source, work, db_kind)
            previous = None
            if keep and _has_state(settings, db_kind):
                previous = state / f"{PRE_RESTORE}{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
                progress(f"keeping the current state in {previous}")
                try:
                    backup(settings, previous, progress)
                except Exception as exc:
                    raise RestoreRefused(
                        f"cannot keep the current state before replacing it ({exc}); "
                        "give --no-keep to restore without keeping it"
                    ) from exc
            _put_database(settings, db_kind, manifest, members[DATABASE], progress)
            restored = _put_files(state, members)
            mark_restored(state, manifest.created_at)  # the next start adopts what nodes kept
        progress(f"restored the state of {time.ctime(manifest.created_at)}")
    finally:
        lock.release()
    return {
        "file": str(source),
        "database": db_kind,
        "backup_created_at": manifest.created_at,
        "backup_usher_version": manifest.usher_version,
        "backup_schema_revision": manifest.schema_revision,
        "files": restored,
        "previous_state": str(previous) if previous else None,
    }


def _checked(source: Path, work: Path, db_kind: str) -> tuple[Manifest, dict[str, Path]]:
    manifest, members = archive.unpack(source, work)
    if manifest.database != db_kind:
        raise RestoreRefused(
            f"the backup is of a {manifest.database} database and this controller's config "
            f"uses {db_kind}: restore it with a config of its kind"
        )
    databases.check_revision(manifest.schema_revision)
    if db_kind == "sqlite" and databases.sqlite_check(members[DATABASE]) != (
        manifest.schema_revision
    ):
        raise BadBackup("the backup's database is not at the revision its manifest names")
    return manifest, members


def _has_state(settings: Settings, db_kind: str) -> bool:
    if db_kind == "sqlite":
        return databases.sqlite_path(settings.db_url).is_file()
    return "vms" in databases.pg_state(settings.db_url)[2]


def _put_database(
    settings: Settings, db_kind: str, manifest: Manifest, dump: Path, progress: Progress
) -> None:
    if db_kind == "sqlite":
        db = databases.sqlite_path(settings.db_url)
        progress(f"bringing the database to this Usher's schema and putting it at {db}")
        databases.upgrade(f"sqlite:///{dump}")
        for suffix in ("-wal", "-shm", "-journal"):  # the old database's: never on the new
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(dump, 0o600)
        shutil.move(dump, db)
    else:
        progress("restoring the PostgreSQL database (pg_restore, psql; one transaction)")
        databases.pg_restore(settings.db_url, dump, manifest.pg_schema)
        progress("bringing the database to this Usher's schema")
        databases.upgrade(settings.db_url)


def _put_files(state: Path, members: dict[str, Path]) -> list[str]:
    restored = []
    for name, path in members.items():
        if not name.startswith(FILES):
            continue
        rel = archive.safe_name(name).relative_to(FILES.rstrip("/"))
        target = state / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not target.parent.resolve().is_relative_to(state.resolve()):
            raise BadBackup(f"the backup's {name} would land outside the state dir")
        os.chmod(path, 0o600)
        os.replace(path, target)
        restored.append(rel.as_posix())
    return sorted(restored)


@contextlib.contextmanager
def _removed(work: Path) -> Iterator[Path]:
    """The private scratch directory ``work`` (made beside where its files go: renames
    there are atomic), removed with what is left in it when the block ends."""
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
