"""Private libvirt daemons, each as if on a host of its own: for ``usher local --driver
libvirt``, the tests and the benchmarks on one machine (a site runs its own libvirtd).

Debian's ``libvirtd`` (the monolithic daemon, with the QEMU driver) is started in a mount
namespace of its own, where private directories under ``root`` are bind-mounted over the
paths every system daemon would share: ``/etc/libvirt`` (its configuration and its persistent
domains), ``/run/libvirt`` (sockets, the status XML and pid files of running domains),
``/var/lib/libvirt`` (per-domain monitor sockets and state), ``/var/log/libvirt`` (each
domain's QEMU log) and ``/var/cache/libvirt`` (the QEMU capabilities cache). Its own pid file
goes under ``root`` too (``--pid-file``; the system daemon's ``/run/libvirtd.pid`` would
clash), it makes no cgroups (``cgroup_controllers = []``) and no per-domain ``/dev``
namespace (``namespaces = []``). Optionally the daemon runs in a network namespace (a path like
``/proc/PID/ns/net``, as the tests' ``netns`` module makes them), so two daemons are two hosts.

The bind mounts are private, but the directories they hide must exist on this machine: the
empty ``/run/libvirt`` is created when missing. QEMU's capabilities, which a new daemon probes
for ~7 s under TCG, are kept between daemons in :data:`CAPS_CACHE`; libvirt trusts a cached
entry only if the host's CPUID is the same, which differs from one CPU to another here, so the
daemon runs on CPU 0 (``taskset``; libvirt gives each QEMU all CPUs again).

Layout under ``root`` (all reachable from outside the namespace)::

    etc/libvirt/      libvirtd.conf, qemu.conf; qemu/<name>.xml for persistent domains
    run/libvirt/      libvirt-sock (what :attr:`LibvirtHost.uri` names), qemu/<name>.pid
    var/lib/libvirt/  var/log/libvirt/  var/cache/libvirt/
    libvirtd.log      the daemon's stderr (its log, level ``log_level``)
    libvirtd.pid

QEMU runs as root, unconfined (``security_driver = "none"``), files keep their owners
(``dynamic_ownership = 0``), and QEMU's stdout/stderr go straight to
``var/log/libvirt/qemu/<name>.log`` (``stdio_handler = "file"``: no ``virtlogd``). Peers reach
the daemon over plain TCP without authentication (``qemu+tcp://ADDR:PORT/system``), which is
what peer-to-peer live migration uses; the migration stream itself goes to a port in
``migration_port_min``..``migration_port_max`` (49152..49215, libvirt's default) on the
destination.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

PRIVATE_DIRS = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)
"""System paths each daemon gets a private copy of (an empty directory under its root)."""

CAPS_CACHE = Path.home() / ".cache" / "usher" / "libvirt-qemu-caps"
"""QEMU capabilities probed by earlier daemons, copied into each new one (probing takes ~7 s
under TCG; libvirt checks each entry against the QEMU binary, itself and the kernel, and
probes again when one is stale)."""
CAPS_DIR = Path("var", "cache", "libvirt", "qemu", "capabilities")

DEFAULT_TCP_PORT = 16509
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _libvirtd_conf(host_uuid: str, listen_addr: str, tcp_port: int) -> str:
    return f"""\
# written by usher.vmm.libvirt_daemon
host_uuid = "{host_uuid}"
listen_tls = 0
listen_tcp = 1
listen_addr = "{listen_addr}"
tcp_port = "{tcp_port}"
auth_tcp = "none"
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0770"
log_level = 3
log_outputs = "3:stderr"
"""


QEMU_CONF = """\
# written by usher.vmm.libvirt_daemon
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"""


@dataclass
class LibvirtHost:
    """One running ``libvirtd`` (see the module's docstring). Stop it with :meth:`stop`, or use
    it as a context manager."""

    name: str
    root: Path
    listen_addr: str
    tcp_port: int
    host_uuid: str
    netns: str | None
    process: subprocess.Popen[bytes] | None = field(repr=False)
    """The daemon's process, if this process started it (None: one adopted from an earlier
    run, see :func:`adopt_libvirt_host`)."""
    _pid: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """libvirtd's process id (in this machine's pid namespace), from its pid file (read
        once: libvirtd removes it when it ends)."""
        if self._pid is None:
            self._pid = int((self.root / "libvirtd.pid").read_text().strip())
        return self._pid

    @property
    def socket_path(self) -> Path:
        """The daemon's read-write Unix socket."""
        return self.root / "run" / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """What a client on this machine connects to (from any network namespace)."""
        return f"qemu:///system?socket={self.socket_path}"

    @property
    def peer_uri(self) -> str:
        """What another daemon uses to reach this one, e.g. as a migration's destination."""
        return f"qemu+tcp://{self.listen_addr}:{self.tcp_port}/system"

    @property
    def log_path(self) -> Path:
        """The daemon's own log (its stderr)."""
        return self.root / "libvirtd.log"

    def qemu_log(self, domain: str) -> Path:
        """Where QEMU's stdout and stderr go for ``domain`` on this host."""
        return self.root / "var" / "log" / "libvirt" / "qemu" / f"{domain}.log"

    def connect(self) -> libvirt.virConnect:
        """A new read-write connection to the daemon (the caller closes it)."""
        return libvirt.open(self.uri)

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the daemon's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def qemu_pids(self) -> list[int]:
        """The running QEMU processes of this daemon's domains, from their pid files
        (``run/libvirt/qemu/<domain>.pid``; ``driver.pid`` there is the daemon's own)."""
        pids = []
        for pid_file in (self.root / "run" / "libvirt" / "qemu").glob("*.pid"):
            if pid_file.name == "driver.pid":
                continue
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().strip()))
        return [pid for pid in pids if _alive(pid)]

    def stop(self) -> None:
        """Kill the daemon and every QEMU it started, and wait until they are all gone."""
        _copy_caps(self.root / CAPS_DIR, CAPS_CACHE)
        victims = self.qemu_pids()
        if self.process is None:
            _end(self.pid)
        elif self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        victims += [pid for pid in self.qemu_pids() if pid not in victims]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(victims)

    def __enter__(self) -> LibvirtHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_gone(pids: list[int]) -> None:
    """Wait until none of ``pids`` runs (orphans are reaped late: /proc tells, not kill)."""
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} outlived SIGKILL")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a dead orphan not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _propagation() -> str:
    """How the daemon's mount namespace keeps its bind mounts to itself: ``private`` on a
    host; in a chroot, whose ``/`` is no mount point and cannot be made private, ``unchanged``,
    which is as safe only where no mount propagates (none is ``shared``)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as file:
        mounts = [line.split() for line in file]
    if any(fields[4] == "/" for fields in mounts):
        return "private"
    if any(tag.startswith("shared:") for fields in mounts for tag in fields[6:]):
        raise RuntimeError(
            "cannot run a private libvirtd here: / is not a mount point (a chroot?) and "
            "shared mounts would carry its bind mounts out of its namespace"
        )
    return "unchanged"


def _end(pid: int) -> None:
    """SIGTERM, then SIGKILL, a daemon this process did not start; wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def adopt_libvirt_host(name: str, root: Path) -> LibvirtHost | None:
    """The daemon an earlier :func:`start_libvirt_host` left running under ``root`` (in this
    machine's network namespace), if it still answers; None otherwise."""
    root = root.resolve()
    try:
        pid = int((root / "libvirtd.pid").read_text().strip())
        conf = (root / "etc" / "libvirt" / "libvirtd.conf").read_text()
    except (OSError, ValueError):
        return None
    settings = dict(
        (key.strip(), value.strip().strip('"'))
        for key, _, value in (line.partition("=") for line in conf.splitlines())
        if value
    )
    if not _alive(pid) or "tcp_port" not in settings:
        return None
    host = LibvirtHost(
        name,
        root,
        settings.get("listen_addr", "127.0.0.1"),
        int(settings["tcp_port"]),
        settings.get("host_uuid", ""),
        None,
        None,
    )
    try:
        libvirt.open(host.uri).close()
    except libvirt.libvirtError:
        return None
    return host


def _copy_caps(source: Path, target: Path) -> None:
    """Copy capability files that ``target`` lacks or has older (by way of a temporary file,
    so that a daemon starting meanwhile never reads half a file)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.glob("*.xml"):
        copy = target / entry.name
        if copy.exists() and copy.stat().st_mtime >= entry.stat().st_mtime:
            continue
        partial = target / f".{entry.name}.{os.getpid()}"
        shutil.copy2(entry, partial)
        partial.replace(copy)


def _free_port(addr: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def start_libvirt_host(
    name: str,
    root: Path,
    *,
    netns: str | None = None,
    listen_addr: str = "127.0.0.1",
    tcp_port: int | None = None,
) -> LibvirtHost:
    """Start ``libvirtd`` for a host ``name`` under ``root`` (made if missing), in the
    network namespace ``netns`` if one is given, and wait until it answers. Its TCP listener
    is on ``listen_addr``:``tcp_port`` (default: 16509 in a network namespace of its own, a
    free port otherwise)."""
    if tcp_port is None:
        tcp_port = DEFAULT_TCP_PORT if netns is not None else _free_port(listen_addr)
    root = root.resolve()
    host_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{root}"))  # stable per root
    binds = []
    for target in PRIVATE_DIRS:
        source = root / target.lstrip("/")
        source.mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)
        binds.append(f"mount --bind {shlex.quote(str(source))} {target}")
    _copy_caps(CAPS_CACHE, root / CAPS_DIR)
    etc = root / "etc" / "libvirt"
    (etc / "libvirtd.conf").write_text(_libvirtd_conf(host_uuid, listen_addr, tcp_port))
    (etc / "qemu.conf").write_text(QEMU_CONF)
    pid_file = root / "libvirtd.pid"
    script = " && ".join(
        [*binds, f"exec taskset -c 0 libvirtd --listen --pid-file {shlex.quote(str(pid_file))}"]
    )
    argv = ["unshare", "--mount", "--propagation", _propagation(), "--", "sh", "-c", script]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    argv = [sys.executable, "-m", "usher.vmm.libvirt_daemon", "reap", *argv]
    with open(root / "libvirtd.log", "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    host = LibvirtHost(name, root, listen_addr, tcp_port, host_uuid, netns, process)
    try:
        _wait_answering(host)
    except BaseException:
        host.stop()
        raise
    return host


def _wait_answering(host: LibvirtHost) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if host.process is not None and host.process.poll() is not None:
            raise RuntimeError(
                f"libvirt host {host.name}: libvirtd exited with {host.process.returncode}; "
                f"its log ends:\n{host.log_tail()}"
            )
        if host.socket_path.exists():
            try:
                conn = libvirt.open(host.uri)
            except libvirt.libvirtError as exc:
                last = str(exc)
            else:
                conn.close()
                host.pid  # noqa: B018 - read while the pid file is there
                return
        time.sleep(0.1)
    raise RuntimeError(
        f"libvirt host {host.name}: libvirtd did not answer on {host.uri} within "
        f"{START_TIMEOUT} s (last error: {last or 'no socket'}); its log ends:\n{host.log_tail()}"
    )


PR_SET_CHILD_SUBREAPER = 36


def reap(argv: list[str]) -> int:
    """Run ``argv`` (libvirtd, by way of unshare) as a child and be the subreaper of what it
    leaves: libvirtd starts each QEMU as a daemon, an orphan, and when one ends it waits until
    the process is gone from the process table (a destroy, the source's end of a migration).
    A host's init reaps orphans at once; one that reaps late (this sandbox's, every ~2 s)
    would add that to every such operation. SIGTERM goes on to the child; returns when it
    ended, with its status (QEMUs still running then are left to init)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = os.posix_spawnp(argv[0], argv, os.environ)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: os.kill(child, received))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    if sys.argv[1:2] != ["reap"] or len(sys.argv) < 3:
        sys.exit("usage: python -m usher.vmm.libvirt_daemon reap COMMAND [ARG...]")
    sys.exit(reap(sys.argv[2:]))
