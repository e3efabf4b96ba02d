"""``ush console VM --attach``: the VM's serial console, read-write, in this terminal.

Everything typed goes to the guest (Ctrl-C included) until ``Ctrl-]``, which detaches. On a
terminal, stdin is put in raw mode for the session and restored however it ends (a detach,
the VM destroyed, a signal). Without a terminal (stdin piped) the input is sent as it comes;
at its end the session stays attached ``linger`` seconds more for the guest's answer, then
detaches; so a script can type commands and read what the guest said.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import BinaryIO

from usher.client.console import MAX_INPUT, AttachedConsole
from usher.client.errors import UsherError

DETACH_KEY = b"\x1d"
"""Ctrl-]: detaches, as in telnet and virsh console."""
DETACHED = 1000
POLL = 0.2


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the block (nothing if ``fd`` is no terminal), put
    back as it was afterwards, also when the block ends by SIGTERM or SIGHUP."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _show_output(console: AttachedConsole, out: BinaryIO, ended: threading.Event) -> None:
    """Copy the console's output to ``out`` until the session ends."""
    try:
        while (text := console.receive()) is not None:
            out.write(text.encode())
            out.flush()
    except OSError:  # our stdout is gone: nothing left to show
        pass
    finally:
        ended.set()


def run_attached(
    console: AttachedConsole,
    *,
    stdin: int = 0,
    out: BinaryIO | None = None,
    linger: float = 2.0,
) -> str | None:
    """Run an attached session: input from the file descriptor ``stdin``, output to ``out``
    (default: stdout). Returns None when the user detached (``Ctrl-]``, or the end of piped
    input), otherwise why the controller ended the session."""
    ended = threading.Event()
    shower = threading.Thread(
        target=_show_output, args=(console, out or sys.stdout.buffer, ended), daemon=True
    )
    shower.start()
    try:
        with raw_terminal(stdin):
            _pass_input(console, stdin, ended, linger)
    finally:
        console.close()
        shower.join(timeout=5)
    code = console.close_code
    if code in (None, DETACHED):
        return None
    return console.close_reason or f"closed with code {code}"


def _pass_input(
    console: AttachedConsole, stdin: int, ended: threading.Event, linger: float
) -> None:
    """Send what comes on ``stdin`` until ``Ctrl-]``, the session's end, or (piped) the end
    of the input plus ``linger`` seconds."""
    while not ended.is_set():
        ready, _, _ = select.select([stdin], [], [], POLL)
        if not ready:
            continue
        data = os.read(stdin, MAX_INPUT)
        if not data:  # piped input ended: give the guest time to answer
            ended.wait(linger)
            return
        typed, detach, _ = data.partition(DETACH_KEY)
        if typed:
            try:
                console.send(typed)
            except UsherError:  # the session ended: the output side says why
                return
        if detach:
            return
