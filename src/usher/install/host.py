"""The host's part of an installation: the service user, directories, files written whole."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class InstallError(Exception):
    """Something on this host keeps the installation from going on; the message says what."""


def ensure_user(name: str, home: Path, uid: int | None = None) -> pwd.struct_passwd:
    """The system user ``name`` (with a group of its own), made if missing. With ``uid``, an
    existing user must have it: hosts sharing storage over NFS need one uid for it."""
    if not USER_NAME.fullmatch(name):
        raise InstallError(f"{name!r} is not a user name (a-z, 0-9, _ and -, at most 32)")
    if name == "root" or uid == 0:
        raise InstallError("the daemons run as a user of their own, never as root")
    try:
        found = pwd.getpwnam(name)
    except KeyError:
        command = ["useradd", "--system", "--user-group", "--home-dir", str(home)]
        command += ["--no-create-home", "--shell", "/usr/sbin/nologin"]
        if uid is not None:
            command += ["--uid", str(uid)]
        done = subprocess.run([*command, name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise InstallError(f"cannot make user {name}: {done.stderr.strip()}") from None
        return pwd.getpwnam(name)
    if found.pw_uid == 0:
        raise InstallError(f"user {name} is root (uid 0): the daemons need a user of their own")
    if uid is not None and found.pw_uid != uid:
        raise InstallError(f"user {name} exists with uid {found.pw_uid}, not {uid}")
    return found


def existing_groups(names: list[str]) -> list[str]:
    """Those of ``names`` that are groups on this host (systemd refuses to start a unit
    whose ``SupplementaryGroups`` names a missing one)."""
    present = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        present.append(name)
    return present


def ensure_dir(path: Path, owner: pwd.struct_passwd, mode: int) -> None:
    """Make ``path`` (and its parents) if missing; a directory made here belongs to ``owner``.
    An existing one is left as it is (an NFS mount's owner is the server's business)."""
    if path.is_dir():
        return
    path.mkdir(parents=True, mode=mode)
    os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(mode)


def own_dir(path: Path, owner: pwd.struct_passwd, mode: int) -> None:
    """Make ``path`` if missing and give it (itself, not what is below) to ``owner`` with
    ``mode``, as systemd wants a ``StateDirectory``: one whose top belongs to someone else
    is chowned recursively at every start, into whatever is mounted below it (the shared
    storage under /var/lib/usher)."""
    ensure_dir(path, owner, mode)
    os.chown(path, owner.pw_uid, owner.pw_gid, follow_symlinks=False)
    path.chmod(mode)


def read_small(path: Path, limit: int) -> str:
    """The text of the regular file ``path`` of at most ``limit`` bytes; a FIFO, device,
    directory or longer file is refused without waiting on it or reading it whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InstallError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise InstallError(f"{path} is larger than {limit} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InstallError(f"{path} is not UTF-8 text") from None


def write_file(
    path: Path,
    text: str,
    *,
    mode: int = 0o644,
    owner: pwd.struct_passwd | None = None,
    replace: bool = True,
) -> bool:
    """Write ``path`` whole (never half a file) with ``mode`` and ``owner`` (default root).
    With ``replace`` false an existing file is kept. Returns whether it was written."""
    if path.exists() and not replace:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def systemd_running() -> bool:
    """Does systemd manage this host (as ``sd_booted()`` tells)?"""
    return Path("/run/systemd/system").is_dir()


def daemon_reload() -> None:
    """Make systemd read the unit files again, where it runs."""
    if systemd_running():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
