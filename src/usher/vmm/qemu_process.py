"""Detached QEMU processes: launching them so they outlive the LNM, and watching them in /proc.

QEMU is started with ``-daemonize``: the command we run forks, the daemon starts a session
of its own, and the command exits once the daemon has set itself up (its QMP socket listens,
its pidfile is written) or failed to. The daemon is then nobody's child but init's, so an LNM
that exits or dies leaves it running, and a restarted LNM finds it again by its pidfile.

Not being its parent, we cannot ``wait()`` for it: its end shows in ``/proc/<pid>/stat``
(gone, or state ``Z`` until init reaps it, which may take a while). ``kill(pid, 0)`` would
call a zombie alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass

from usher.vmm.base import DriverError

log = logging.getLogger(__name__)

LAUNCH_TIMEOUT = 30.0
"""Seconds QEMU may take to set itself up before the launch counts as failed."""

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/<pid>/stat`` says about a process."""

    state: str
    cpu_seconds: float
    rss_bytes: int
    exit_code: int
    """``waitpid``-style status of a zombie (0 while the process runs)."""

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "x")


def read_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            line = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may contain anything: split after it.
    fields = line[line.rindex(")") + 2 :].split()
    return ProcStat(
        state=fields[0],
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
        rss_bytes=int(fields[21]) * _PAGE_SIZE,
        exit_code=int(fields[49]) if len(fields) > 49 else 0,
    )


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    stat = read_stat(pid)
    return stat is not None and stat.alive


def runs_with(pid: int, argument: str) -> bool:
    """Whether the live process ``pid`` has ``argument`` on its command line: tells our QEMU
    from an unrelated process that got the number of a dead one."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = file.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return os.fsencode(argument) in argv and is_alive(pid)


def how_it_ended(pid: int) -> str | None:
    """``"signal 9"`` or ``"exit status 1"`` while the ended process is still a zombie;
    None once it is reaped (or if it still runs)."""
    stat = read_stat(pid)
    if stat is None or stat.alive:
        return None
    if os.WIFSIGNALED(stat.exit_code):
        number = os.WTERMSIG(stat.exit_code)
        with contextlib.suppress(ValueError):
            return f"signal {number}, {signal.Signals(number).name}"
        return f"signal {number}"
    return f"exit status {os.WEXITSTATUS(stat.exit_code)}"


def kill(pid: int) -> None:
    """SIGKILL ``pid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


GONE_POLL = 0.05
"""The longest wait between two looks at a process that is ending."""


async def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to end; whether it did. Looks again after 1 ms,
    then twice as long each time up to :data:`GONE_POLL` s: a QEMU that quit (its QMP
    connection closed) is usually gone a few ms later, and a migration's source, a stop and a
    destroy wait for that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wait = 0.001
    while is_alive(pid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(wait)
        wait = min(2 * wait, GONE_POLL)
    return True


def read_pid(pidfile: str) -> int | None:
    """The number in ``pidfile``; None if there is none."""
    try:
        with open(pidfile, encoding="ascii") as file:
            return int(file.read().strip())
    except (FileNotFoundError, ValueError):
        return None


async def _end_launched(proc: asyncio.subprocess.Process, pidfile: str) -> None:
    """Kill a QEMU being launched: the launcher, and the daemon it forked (by its pidfile)."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    pid = read_pid(pidfile)
    if pid is not None and runs_with(pid, pidfile):
        kill(pid)
        await wait_gone(pid, 5.0)


async def launch(argv: list[str], *, cwd: str, pidfile: str, log: str | None = None) -> int:
    """Start ``argv`` (a QEMU command line) detached; return the daemon's pid once it is set
    up. Raises :class:`DriverError` with QEMU's own message when it cannot start (from its
    stderr, or from ``log`` when ``argv`` sends its messages there with ``-D``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            "-daemonize",
            "-pidfile",
            pidfile,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise DriverError(f"{argv[0]} is not installed (Debian package qemu-system-x86)") from None
    talk = asyncio.ensure_future(proc.communicate())
    try:
        done, _ = await asyncio.wait([talk], timeout=LAUNCH_TIMEOUT)
    except asyncio.CancelledError:  # called off: let QEMU say it runs (or not), then end it
        await asyncio.wait([talk], timeout=LAUNCH_TIMEOUT)
        await _end_launched(proc, pidfile)
        raise
    if not done:
        await _end_launched(proc, pidfile)
        raise DriverError(f"QEMU did not get ready within {LAUNCH_TIMEOUT:g} s")
    _, stderr = talk.result()
    message = stderr.decode(errors="replace").strip()
    if not message and log is not None:
        with contextlib.suppress(OSError), open(os.path.join(cwd, log), "rb") as file:
            message = file.read()[-4096:].decode(errors="replace").strip()
    if proc.returncode != 0:
        raise DriverError(f"QEMU failed to start: {message or f'exit status {proc.returncode}'}")
    if message:
        log.warning("QEMU: %s", message)
    pid = read_pid(pidfile)
    if pid is None:
        raise DriverError(f"QEMU started but wrote no pidfile {pidfile}")
    return pid
