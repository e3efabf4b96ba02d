"""A stand-in for ``systemctl`` on the deploy test's hosts, where no systemd runs.

It starts a unit's ``ExecStart`` the way systemd would in what the test can check: as its
``User`` and ``Group`` with ``SupplementaryGroups``, ``AmbientCapabilities`` and
``NoNewPrivileges`` (through ``setpriv``), its ``UMask``, a clean environment with ``HOME``,
``USER``, ``STATE_DIRECTORY`` and its ``Environment``, its ``StateDirectory`` made and owned
by the user, in a mount namespace of its own with ``ProtectSystem=strict``,
``ReadWritePaths`` and ``PrivateTmp`` applied; it stops one by its ``KillMode``
(``process``: the main process only). The other sandboxing options (``ProtectHome``,
``PrivateDevices``, the ``Protect*``/``Restrict*`` family, the capability bounding set) are
not applied: ``systemd-analyze verify`` checks those. Output goes to
``/run/usher-units/UNIT.log``, the main pid to ``UNIT.pid``.

Usage: ``systemctl_shim.py daemon-reload | enable [--now] UNIT | start|stop|restart UNIT |
is-active UNIT | show -p MainPID --value UNIT``.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

from usher.vmm.libvirt_daemon import _propagation

UNIT_DIR = Path("/etc/systemd/system")
RUN_DIR = Path("/run/usher-units")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse(unit: str) -> dict[str, str]:
    """The unit's ``Section.Key`` settings: the last of a repeated key, except ``Environment``
    lines, which add up (space-separated, as systemd reads them)."""
    settings: dict[str, str] = {}
    section = ""
    for raw in (UNIT_DIR / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        name = f"{section}.{key.strip()}"
        if key.strip() == "Environment" and name in settings:
            value = f"{settings[name]} {value.strip()}"
        settings[name] = value.strip()
    return settings


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), p) for p in points]


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _usher_in_tmp() -> list[Path]:
    """The directories below /tmp that hold the Usher being tested (CI's clone and its
    virtualenv): a site has it in /opt/usher, which a private /tmp leaves alone."""
    tmp = Path("/tmp")
    here = (Path(sys.prefix), Path(__file__).resolve().parent)
    return sorted({tmp / p.relative_to(tmp).parts[0] for p in here if p.is_relative_to(tmp)})


def sandbox(unit: str, command: list[str]) -> NoReturn:
    """Run in a mount namespace of the service's own: ``ProtectSystem=strict`` (everything but
    /dev, /proc and /sys read-only; ``ReadWritePaths`` and the ``StateDirectory`` writable) and
    ``PrivateTmp`` (an empty /tmp, but for the Usher under test: :func:`_usher_in_tmp`), then
    exec ``command``."""
    s = parse(unit)
    private_tmp = s.get("Service.PrivateTmp") == "yes"
    held = []
    for i, kept in enumerate(_usher_in_tmp() if private_tmp else []):
        hold = RUN_DIR / f"held-{os.getpid()}-{i}"
        hold.mkdir(parents=True)
        _mount("--rbind", str(kept), str(hold))
        held.append((hold, kept))
    if s.get("Service.ProtectSystem") == "strict":
        for point in _mount_points():
            if point.split("/")[1] not in ("dev", "proc", "sys"):
                subprocess.run(["mount", "-o", "remount,bind,ro", point], capture_output=True)
        writable = s.get("Service.ReadWritePaths", "").split()
        if s.get("Service.StateDirectory"):
            writable.append(f"/var/lib/{s['Service.StateDirectory']}")
        for path in sorted(writable, key=len):  # outer first: an inner one stays on top
            _mount("--rbind", path, path)
            _mount("-o", "remount,bind,rw", path)
    if private_tmp:
        for path in ("/tmp", "/var/tmp"):
            _mount("-t", "tmpfs", "-o", "mode=1777", "tmpfs", path)
        for hold, kept in held:
            kept.mkdir()
            _mount("--rbind", str(hold), str(kept))
    os.execvp(command[0], command)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def main_pid(unit: str) -> int | None:
    try:
        pid = int((RUN_DIR / f"{unit}.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def start(unit: str) -> None:
    if main_pid(unit) is not None:
        return
    s = parse(unit)
    user = pwd.getpwnam(s.get("Service.User", "root"))
    state = s.get("Service.StateDirectory")
    env = {"PATH": PATH, "LANG": "C.UTF-8", "HOME": user.pw_dir, "USER": user.pw_name}
    env["LOGNAME"] = user.pw_name
    env.update(dict(item.split("=", 1) for item in shlex.split(s.get("Service.Environment", ""))))
    if state:
        directory = Path("/var/lib") / state
        directory.mkdir(parents=True, exist_ok=True)
        os.chown(directory, user.pw_uid, user.pw_gid)
        directory.chmod(int(s.get("Service.StateDirectoryMode", "0755"), 8))
        env["STATE_DIRECTORY"] = str(directory)
    setpriv = [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={s.get('Service.Group', user.pw_gid)}",
    ]
    groups = s.get("Service.SupplementaryGroups", "").split()
    setpriv.append(f"--groups={','.join(groups)}" if groups else "--clear-groups")
    caps = [
        c.lower().removeprefix("cap_") for c in s.get("Service.AmbientCapabilities", "").split()
    ]
    if caps:
        wanted = ",".join(f"+{c}" for c in caps)
        setpriv += [f"--inh-caps={wanted}", f"--ambient-caps={wanted}"]
    if s.get("Service.NoNewPrivileges") == "yes":
        setpriv.append("--no-new-privs")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log = open(RUN_DIR / f"{unit}.log", "ab")  # noqa: SIM115 - handed to the daemon
    os.umask(int(s.get("Service.UMask", "0022"), 8))
    own_mounts = ["unshare", "--mount", f"--propagation={_propagation()}", "--"]
    shim = [sys.executable, __file__, "sandbox", unit, "--"]
    process = subprocess.Popen(
        [*own_mounts, *shim, *setpriv, "--", *shlex.split(s["Service.ExecStart"])],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    (RUN_DIR / f"{unit}.pid").write_text(str(process.pid))
    time.sleep(0.5)
    if process.poll() is not None:
        sys.exit(f"{unit} exited at once ({process.returncode}); see {RUN_DIR / unit}.log")


def stop(unit: str) -> None:
    pid = main_pid(unit)
    if pid is None:
        return
    group = parse(unit).get("Service.KillMode", "control-group") != "process"
    kill = os.killpg if group else os.kill
    kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> None:
    if argv[0] == "sandbox":  # sandbox UNIT -- COMMAND…
        sandbox(argv[1], argv[3:])
    words = [a for a in argv if not a.startswith("-")]
    verb, units = words[0], [u if u.endswith(".service") else f"{u}.service" for u in words[1:]]
    if verb == "daemon-reload":
        return
    if verb == "enable":
        if "--now" in argv:
            for unit in units:
                start(unit)
        return
    actions = {"start": [start], "stop": [stop], "restart": [stop, start]}
    if verb in actions:
        for unit in units:
            for action in actions[verb]:
                action(unit)
        return
    if verb == "is-active":
        sys.exit(0 if all(main_pid(u) for u in units) else 3)
    if verb == "show":  # show -p MainPID --value UNIT
        print(main_pid(units[-1]) or 0)
        return
    sys.exit(f"systemctl stand-in: {verb} is not known here")


if __name__ == "__main__":
    main(sys.argv[1:])
