"""The backup file: a gzipped tar of a manifest, the database dump and the state dir's files.

The first member is ``manifest.json``: the format, the Usher version that wrote it, when,
the kind of database, its schema revision, and every other member's size and SHA-256. A
reader takes nothing it does not know from the manifest and checks every byte against it,
so a truncated, corrupt or foreign file is refused before anything is changed. Members are
read into memory or copied by the reader itself, never extracted by ``tarfile``: a name
with ``..``, an absolute path, a link or a device is refused, not followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

FORMAT = "usher-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATABASE = "database"  # the dump: an SQLite file, or pg_dump's custom format
FILES = "files/"  # the state dir's files, under their paths relative to it
CHUNK = 1 << 20


class BadBackup(Exception):
    """The file is not a whole Usher backup; the message says what is wrong."""


@dataclass
class Manifest:
    usher_version: str
    database: str  # "sqlite" or "postgresql"
    schema_revision: str | None
    created_at: float = field(default_factory=time.time)
    pg_schema: str | None = None  # PostgreSQL: the schema the tables were dumped from
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> size, sha256

    def to_json(self) -> bytes:
        body = {"format": FORMAT, "format_version": FORMAT_VERSION, **self.__dict__}
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise BadBackup("not an Usher backup (its manifest names another format)")
            if body.get("format_version") != FORMAT_VERSION:
                raise BadBackup(
                    f"backup format version {body.get('format_version')!r} is not one this "
                    f"Usher reads ({FORMAT_VERSION})"
                )
            manifest = cls(
                usher_version=str(body["usher_version"]),
                database=str(body["database"]),
                schema_revision=body["schema_revision"],
                created_at=float(body["created_at"]),
                pg_schema=body.get("pg_schema"),
                members={
                    str(name): {"size": int(m["size"]), "sha256": str(m["sha256"])}
                    for name, m in dict(body["members"]).items()
                },
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadBackup(f"the backup's manifest is malformed: {exc!r}") from None
        if manifest.database not in ("sqlite", "postgresql"):
            raise BadBackup(f"unknown database kind {manifest.database!r} in the manifest")
        if DATABASE not in manifest.members:
            raise BadBackup("the backup's manifest names no database dump")
        for name in manifest.members:
            safe_name(name)
        return manifest


def safe_name(name: str) -> PurePosixPath:
    """``name`` as a relative path that stays where it is put, or :class:`BadBackup`."""
    path = PurePosixPath(name)
    if path.is_absolute() or path.as_posix() != name or ".." in path.parts:
        raise BadBackup(f"the backup names an unsafe path {name!r}")
    if name != DATABASE and not name.startswith(FILES):
        raise BadBackup(f"the backup holds an unexpected member {name!r}")
    return path


def _digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def write(target: Path, manifest: Manifest, sources: dict[str, Path]) -> int:
    """Write the backup of ``sources`` (member name -> file) to ``target`` atomically and
    mode 0600: into a temporary file beside it, flushed to disk, then renamed over it.
    Returns its size."""
    for name, source in sources.items():
        safe_name(name)
        size, sha = _digest(source)
        manifest.members[name] = {"size": size, "sha256": sha}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                _add(tar, MANIFEST, io.BytesIO(manifest.to_json()), len(manifest.to_json()))
                for name, source in sources.items():
                    with source.open("rb") as fh:
                        _add(tar, name, fh, manifest.members[name]["size"])
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on disk
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target.stat().st_size


def _add(tar: tarfile.TarFile, name: str, fh: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    tar.addfile(info, fh)


def unpack(source: Path, into: Path) -> tuple[Manifest, dict[str, Path]]:
    """Read and check the whole backup ``source``, copying its members into the private
    directory ``into``; returns its manifest and member name -> file. Raises
    :class:`BadBackup` for anything but a whole, intact Usher backup."""
    try:
        with tarfile.open(source, mode="r:*") as tar:
            return _unpack(tar, into)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise BadBackup(f"{source} is not a whole Usher backup: {exc}") from None


def _unpack(tar: tarfile.TarFile, into: Path) -> tuple[Manifest, dict[str, Path]]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile():
        raise BadBackup("not an Usher backup (it does not begin with a manifest)")
    if first.size > CHUNK:
        raise BadBackup("not an Usher backup (its manifest is too large)")
    manifest = Manifest.from_json(_read(tar, first))
    paths: dict[str, Path] = {}
    for member in iter(tar.next, None):
        expected = manifest.members.get(member.name)
        if expected is None:
            safe_name(member.name)  # an unsafe name says so; a safe one is merely unexpected
            raise BadBackup(f"the backup holds a member its manifest does not name: {member.name}")
        if not member.isfile():
            raise BadBackup(f"the backup's member {member.name} is not a regular file")
        if member.name in paths:
            raise BadBackup(f"the backup holds {member.name} twice")
        path = into / f"member-{len(paths)}"
        _copy_checked(tar, member, path, expected)
        paths[member.name] = path
    missing = sorted(set(manifest.members) - set(paths))
    if missing:
        raise BadBackup(f"the backup is truncated: it lacks {', '.join(missing)}")
    return manifest, paths


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    assert fh is not None  # a regular file
    return fh.read()


def _copy_checked(
    tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, expected: dict[str, Any]
) -> None:
    fh = tar.extractfile(member)
    assert fh is not None
    sha = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != expected["size"] or sha.hexdigest() != expected["sha256"]:
        raise BadBackup(f"the backup's {member.name} does not match its manifest (corrupt)")
