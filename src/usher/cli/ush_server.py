"""The warm ``ush`` server: ush's libraries imported once, a forked child per command.

Started by :mod:`usher.cli.ush_launcher` as ``python -m usher.cli.ush_server SOCKET``. It
accepts a connection for each command and forks at once; the child takes the launcher's
stdin, stdout and stderr, its environment and working directory, answers with its pid, runs
the command as ``ush`` would, and answers with the exit status. Only the server's own user
may connect (the socket is 0600 and the peer's uid is checked). The server ends after
:data:`~usher.cli.ush_launcher.IDLE_SECONDS` (``USHER_SERVER_IDLE``) without a command, when
ush's code changes (checked every :data:`~usher.cli.ush_launcher.CHECK_SECONDS`), and when a
launcher speaks another protocol (the child answers ``stale`` and removes the socket; the
launcher runs the command itself and starts a new server).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

from usher.cli import ush
from usher.cli.ush_launcher import (
    CHECK_SECONDS,
    FORWARDED_SIGNALS,
    IDLE_SECONDS,
    PROTOCOL,
    code_stamp,
    peer_uid,
    private_dir,
)
from usher.cli.ush_plugin_commands import add_plugin_commands
from usher.cli.ush_render import VM_COLUMNS

MAX_REQUEST = 16 << 20


def _answer(conn: socket.socket, **answer: object) -> None:
    conn.sendall(json.dumps(answer).encode() + b"\n")


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise EOFError("the launcher went away")
    return data


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"), as click never does
    return 1


def _take_on(request: dict[str, Any]) -> None:
    """Become the launcher's process as far as a command can tell: its working directory,
    environment (time zone included), umask, stream encodings and ignored signals."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    os.umask(int(request["umask"]))
    streams = {"stdin": sys.stdin, "stdout": sys.stdout, "stderr": sys.stderr}
    for name, (encoding, errors) in request["streams"].items():
        with contextlib.suppress(AttributeError, LookupError, OSError, ValueError):
            streams[name].reconfigure(  # type: ignore[union-attr]
                encoding=encoding, errors=errors, line_buffering=streams[name].isatty()
            )
    ignored = set(request["ignored"])
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for signum in FORWARDED_SIGNALS:
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, signal.SIG_IGN if signum in ignored else default)


def _end_with(conn: socket.socket) -> None:
    """Watch the launcher (it sends nothing more): when it is gone, so is its command."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    os._exit(129)


def run_one(conn: socket.socket, path: str, inode: int) -> int:
    """In the forked child: take the launcher's request and run it; the exit status."""
    header, fds, _flags, _addr = socket.recv_fds(conn, 4, 3)
    if len(header) != 4 or len(fds) != 3 or peer_uid(conn) != os.getuid():
        return 2
    (size,) = struct.unpack("!I", header)
    if size > MAX_REQUEST:
        return 2
    request = json.loads(_read_exactly(conn.makefile("rb"), size))
    if request.get("protocol") != PROTOCOL:  # another version of ush: make way
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)
        os.kill(os.getppid(), signal.SIGTERM)
        _answer(conn, stale=True)
        return 0
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    _take_on(request)
    _answer(conn, pid=os.getpid())
    threading.Thread(target=_end_with, args=(conn,), daemon=True).start()
    sys.argv = ["ush", *request["argv"]]
    try:
        ush.main()
        status = 0
    except SystemExit as exc:
        status = _exit_status(exc.code)
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # as Python would report it, in the user's terminal
        import traceback

        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    _answer(conn, exit=status)
    return status


def _warm_up() -> None:
    """Do once what every command's first steps would do in each child: the lazy imports
    and caches of httpx (a client and its TLS setup), pydantic (a page of VMs) and rich (a
    table), so children inherit them done."""
    from usher.cli.ush_render import Renderer
    from usher.client import Client
    from usher.model import VM, Operation, Page

    with contextlib.suppress(Exception):  # no controller configured yet: nothing to warm
        Client(url="https://localhost:1", token="-").close()
    vm = VM(id="vm-000000000000", name="warm", owner="-", spec={})
    Page[VM].model_validate({"items": [vm.model_dump(mode="json")], "total": 1, "next": None})
    Page[Operation].model_validate({"items": [], "total": 0, "next": None})
    out = Renderer("table")
    with open(os.devnull, "w") as devnull:
        out.console.file = devnull
        out.vms([vm], list(VM_COLUMNS))
        out.vm(vm)


def _listen(path: str) -> socket.socket | None:
    """The listening socket at ``path``; None when another server already answers there."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return None
    except OSError:
        pass
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    listener.listen(64)
    return listener


def serve(path: str, idle: float) -> None:
    os.chdir("/")  # nothing is imported from where the server was started
    if not private_dir(os.path.dirname(path)):
        return  # another user could replace the socket: no server
    listener = _listen(path)
    if listener is None:
        return
    inode = os.stat(path).st_ino
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    stamp = code_stamp()
    add_plugin_commands(ush.cli)  # as help and the shell need them: loaded once, here
    _warm_up()
    listener.settimeout(min(idle, CHECK_SECONDS))
    waited = 0.0
    checked = time.monotonic()
    try:
        while True:
            if time.monotonic() - checked >= CHECK_SECONDS:  # (busy or not)
                if code_stamp() != stamp:
                    return
                checked = time.monotonic()
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                waited += listener.gettimeout() or 0.0
                if waited >= idle:
                    return
                continue
            waited = 0.0
            if os.fork() == 0:
                listener.close()
                status = 2
                try:
                    conn.settimeout(None)
                    status = run_one(conn, path, inode)
                finally:
                    os._exit(status)
            conn.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == inode:
                os.unlink(path)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    idle = float(os.environ.get("USHER_SERVER_IDLE", IDLE_SECONDS))
    serve(sys.argv[1], idle)


if __name__ == "__main__":
    main()
