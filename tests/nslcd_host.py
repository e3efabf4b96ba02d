"""Debian's nslcd on this host, run with a guest's settings in a private mount namespace (its
own ``/etc/nslcd.conf``, ``/etc/nsswitch.conf``, ``/etc/pam.d`` and ``/run/nslcd``), then asked
as a guest's sshd would ask it: names through NSS (``getent``), logins through PAM
(``pamtester``: authenticate, then account management). Needs root and the packages
``nslcd``, ``libnss-ldapd``, ``libpam-ldapd`` and ``pamtester`` (test.sh installs them)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# the auth and account stacks Debian's pam-auth-update writes once libpam-ldapd is installed
PAM_SERVICE = """\
auth [success=2 default=ignore] pam_unix.so nullok
auth [success=1 default=ignore] pam_ldap.so minimum_uid=1000 use_first_pass
auth requisite pam_deny.so
auth required pam_permit.so
account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so
account requisite pam_deny.so
account required pam_permit.so
account [success=ok new_authtok_reqd=done ignore=ignore user_unknown=ignore \
authinfo_unavail=ignore default=bad] pam_ldap.so minimum_uid=1000
"""
NEEDED = ("/usr/sbin/nslcd", "/usr/bin/pamtester", "/usr/bin/getent", "/usr/bin/unshare")


@dataclass
class Answers:
    passwd: dict[str, list[str]]  # name -> the fields getent prints
    group: dict[str, list[str]]
    logins: dict[str, bool]  # "user:password" -> admitted (authenticated and account ok)
    log: str


def missing() -> str | None:
    """What this host lacks to run nslcd here (None: nothing)."""
    if os.geteuid() != 0:
        return "root (for a private mount namespace)"
    absent = [p for p in NEEDED if not Path(p).exists()]
    if not list(Path("/").glob("usr/lib/*/security/pam_ldap.so")) and not list(
        Path("/").glob("lib/*/security/pam_ldap.so")
    ):
        absent.append("pam_ldap.so (libpam-ldapd)")
    return ", ".join(absent) or None


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
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nslcd.conf"
    conf.write_text(nslcd_conf)
    conf.chmod(0o600)
    run = root / "run"
    run.mkdir(exist_ok=True)
    shutil.chown(run, "nslcd", "nslcd")
    nsswitch = root / "nsswitch.conf"
    nsswitch.write_text(Path("/etc/nsswitch.conf").read_text())
    edit = nsswitch_command.replace("/etc/nsswitch.conf", shlex.quote(str(nsswitch)))
    subprocess.run(["sh", "-c", edit], check=True)
    pam = root / "pam.d"
    pam.mkdir(exist_ok=True)
    (pam / "usher-guest").write_text(PAM_SERVICE)
    (root / "passwords").mkdir(exist_ok=True)
    checks = []
    for i, (user, password) in enumerate(logins):
        (root / "passwords" / str(i)).write_text(password + "\n")
        checks.append(
            f"if pamtester usher-guest {shlex.quote(user)} authenticate acct_mgmt "
            f"< {root}/passwords/{i} >/dev/null 2>&1; then echo 'login {i} yes'; "
            f"else echo 'login {i} no'; fi"
        )
    quoted = " ".join(shlex.quote(n) for n in names)
    script = "\n".join(
        [
            "set -e",
            "mkdir -p /run/nslcd",
            f"mount --bind {run} /run/nslcd",
            f"mount --bind {conf} /etc/nslcd.conf",
            f"mount --bind {nsswitch} /etc/nsswitch.conf",
            f"mount --bind {pam} /etc/pam.d",
            f"/usr/sbin/nslcd -d > {root}/nslcd.log 2>&1 &",
            "for i in $(seq 100); do [ -S /run/nslcd/socket ] && break; sleep 0.1; done",
            f"for n in {quoted}; do getent passwd \"$n\" | sed 's/^/passwd /' || true; done",
            f"for n in {quoted}; do getent group \"$n\" | sed 's/^/group /' || true; done",
            *checks,
            "kill $! && wait $! || true",
        ]
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = (root / "nslcd.log").read_text(errors="replace") if (root / "nslcd.log").exists() else ""
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
