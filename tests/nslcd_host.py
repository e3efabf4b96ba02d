"""Debian's nslcd, run with a guest's settings in a private mount namespace of this host (its
own ``/etc/nslcd.conf``, ``/etc/nsswitch.conf``, ``/etc/pam.d``, ``/etc/passwd``, ``/etc/group``
and ``/run/nslcd``), then asked as a guest's sshd would ask it: names through NSS (``getent``),
logins through PAM (``pamtester``: authenticate, then account management).

Nothing of it is installed on the host: the packages ``nslcd``, ``libnss-ldapd``,
``libpam-ldapd`` and ``pamtester`` are fetched with ``apt-get download`` into
``$USHER_IMAGE_CACHE/debs`` (default ``/var/cache/usher-ci``, as tests/guest_images.py) and
unpacked with ``dpkg-deb -x`` into the test's directory (no maintainer scripts: the host's PAM
stack, nsswitch.conf and users stay as they are). Inside the namespace the NSS module is found
through ``LD_LIBRARY_PATH``, ``pam_ldap.so`` is named by its path in the private PAM service,
and an ``nslcd`` user is added to the private ``/etc/passwd`` if the host has none. Their
libraries (``libldap-2.5-0``, ``libgssapi-krb5-2``, ``libpam0g``) come with the packages
test.sh installs. Needs root."""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from guest_images import CACHE_ENV, DEFAULT_CACHE
from usher.images.debs import AptError, DebCache, extract
from usher.vmm.libvirt_daemon import _propagation

PACKAGES = ("nslcd", "libnss-ldapd", "libpam-ldapd", "pamtester")
# the auth and account stacks Debian's pam-auth-update writes once libpam-ldapd is installed,
# with pam_ldap.so named by its path in the unpacked packages
PAM_SERVICE = """\
auth [success=2 default=ignore] pam_unix.so nullok
auth [success=1 default=ignore] {pam_ldap} minimum_uid=1000 use_first_pass
auth requisite pam_deny.so
auth required pam_permit.so
account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so
account requisite pam_deny.so
account required pam_permit.so
account [success=ok new_authtok_reqd=done ignore=ignore user_unknown=ignore \
authinfo_unavail=ignore default=bad] {pam_ldap} minimum_uid=1000
"""
NEEDED = ("getent", "unshare", "apt-get", "dpkg-deb", "ldd")


@dataclass
class Answers:
    passwd: dict[str, list[str]]  # name -> the fields getent prints
    group: dict[str, list[str]]
    logins: dict[str, bool]  # "user:password" -> admitted (authenticated and account ok)
    log: str


@dataclass
class Unpacked:
    """Where the unpacked packages put what is run."""

    nslcd: Path
    pamtester: Path
    nss_dir: Path  # holds libnss_ldap.so.2
    pam_ldap: Path


def missing() -> str | None:
    """What this host lacks to run nslcd here (None: nothing). The packages themselves are
    fetched by :func:`ask`, which fails if it cannot."""
    absent = [] if os.geteuid() == 0 else ["root (for a private mount namespace)"]
    absent += [command for command in NEEDED if shutil.which(command) is None]
    return ", ".join(absent) or None


def _only(tree: Path, pattern: str) -> Path:
    found = sorted(tree.glob(pattern))
    if len(found) != 1:
        raise AssertionError(f"the unpacked packages hold {len(found)} {pattern}, not one")
    return found[0]


def unpack(dest: Path) -> Unpacked:
    """Fetch the packages (unless cached) and unpack them under ``dest``; fail with the reason
    if they cannot be fetched or their libraries are not on this host."""
    cache = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE) / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("a") as lock:  # two test runs never download into one file
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            debs = DebCache(cache, lambda line: print(line, file=sys.stderr)).fetch(*PACKAGES)
            for deb in debs:
                extract(deb, dest)
        except AptError as exc:
            raise AssertionError(
                f"cannot fetch Debian's {', '.join(PACKAGES)} into {cache} "
                f"(apt-get download needs the network and apt sources): {exc}"
            ) from exc
    found = Unpacked(
        nslcd=_only(dest, "usr/sbin/nslcd"),
        pamtester=_only(dest, "usr/bin/pamtester"),
        nss_dir=_only(dest, "**/libnss_ldap.so.2").parent,
        pam_ldap=_only(dest, "**/security/pam_ldap.so"),
    )
    for binary in (found.nslcd, found.pamtester, found.nss_dir / "libnss_ldap.so.2"):
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        lacking = [line.split()[0] for line in out.splitlines() if "not found" in line]
        if lacking:
            raise AssertionError(f"{binary.name} needs libraries this host lacks: {lacking}")
    return found


def _ids(path: Path) -> dict[str, int]:
    """name -> id of a passwd or group file."""
    ids = {}
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            ids[fields[0]] = int(fields[2])
    return ids


def _add_nslcd_user(etc: Path) -> tuple[int, int]:
    """Copy the host's passwd and group files into ``etc``, with an ``nslcd`` user and group
    (the guest's nslcd.conf runs nslcd as them) added if the host has none; their ids."""
    passwd, group = etc / "passwd", etc / "group"
    shutil.copyfile("/etc/passwd", passwd)
    shutil.copyfile("/etc/group", group)
    users, groups = _ids(passwd), _ids(group)
    gid = groups.get("nslcd")
    if gid is None:
        gid = min(set(range(100, 1000)) - set(groups.values()))
        with group.open("a") as fh:
            fh.write(f"nslcd:x:{gid}:\n")
    uid = users.get("nslcd")
    if uid is None:
        uid = min(set(range(100, 1000)) - set(users.values()))
        with passwd.open("a") as fh:
            fh.write(f"nslcd:x:{uid}:{gid}:nslcd:/run/nslcd:/usr/sbin/nologin\n")
    return uid, gid


def ask(
    root: Path,
    nslcd_conf: str,
    nsswitch_command: str,
    names: list[str],
    logins: list[tuple[str, str]],
) -> Answers:
    """Run nslcd with ``nslcd_conf`` and the host's nsswitch.conf changed by
    ``nsswitch_command`` (the guest's runcmd, on a copy); look ``names`` up as users and groups
    and try each (user, password) of ``logins``."""
    tree = unpack(root / "debs")
    etc = root / "etc"  # laid over the host's /etc (a read-only overlay) in the namespace
    (etc / "pam.d").mkdir(parents=True, exist_ok=True)
    conf = etc / "nslcd.conf"
    conf.write_text(nslcd_conf)
    conf.chmod(0o600)
    nsswitch = etc / "nsswitch.conf"
    nsswitch.write_text(Path("/etc/nsswitch.conf").read_text())
    edit = nsswitch_command.replace("/etc/nsswitch.conf", shlex.quote(str(nsswitch)))
    subprocess.run(["sh", "-c", edit], check=True)
    (etc / "pam.d" / "usher-guest").write_text(PAM_SERVICE.format(pam_ldap=tree.pam_ldap))
    uid, gid = _add_nslcd_user(etc)
    (root / "passwords").mkdir(exist_ok=True)
    pamtester = shlex.quote(str(tree.pamtester))
    checks = []
    for i, (user, password) in enumerate(logins):
        given = root / "passwords" / str(i)
        given.write_text(password + "\n")
        checks.append(
            f"if {pamtester} usher-guest {shlex.quote(user)} authenticate acct_mgmt "
            f"< {shlex.quote(str(given))} >/dev/null 2>&1; then echo 'login {i} yes'; "
            f"else echo 'login {i} no'; fi"
        )
    quoted = " ".join(shlex.quote(n) for n in names)
    log_file = root / "nslcd.log"
    script = "\n".join(
        [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={shlex.quote(f'{etc}:/etc')} /etc",
            # a /run of its own: nslcd's socket, and a host nscd's socket out of getent's way
            "mount -t tmpfs -o mode=0755 tmpfs /run",
            f"mkdir /run/nslcd && chown {uid}:{gid} /run/nslcd",
            f"export LD_LIBRARY_PATH={shlex.quote(str(tree.nss_dir))}  # libnss_ldap.so.2",
            f"{shlex.quote(str(tree.nslcd))} -d > {shlex.quote(str(log_file))} 2>&1 &",
            "for i in $(seq 100); do [ -S /run/nslcd/socket ] && break; sleep 0.1; done",
            f"for n in {quoted}; do getent passwd \"$n\" | sed 's/^/passwd /' || true; done",
            f"for n in {quoted}; do getent group \"$n\" | sed 's/^/group /' || true; done",
            *checks,
            "kill $! && wait $! || true",
        ]
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", _propagation(), "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    if done.returncode != 0:
        raise AssertionError(f"nslcd run failed: {done.stderr}\n{log[-3000:]}")
    answers = Answers({}, {}, {}, log)
    for line in done.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind in ("passwd", "group"):
            fields = rest.split(":")
            getattr(answers, kind)[fields[0]] = fields
        elif kind == "login":
            index, verdict = rest.split()
            user, password = logins[int(index)]
            answers.logins[f"{user}:{password}"] = verdict == "yes"
    return answers
