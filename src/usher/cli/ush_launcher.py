"""What the ``ush`` command runs first: it hands the command to a warm ``ush`` server, or runs
it in this process.

Starting Python and importing ush's libraries (click, httpx, pydantic, rich) takes most of a
one-shot command's time. So, as ``dmypy`` does for mypy, a per-user server keeps them
imported (:mod:`usher.cli.ush_server`): this launcher, which imports only the standard
library's cheapest modules, passes it the command line, the environment, the working
directory, its umask, the encodings of its standard streams and the signals it ignores, and
its own stdin, stdout and stderr (the file descriptors themselves, over a Unix socket); the
server forks a child that runs the command on them, so it writes to this terminal and reads
from it as if it ran here. Signals the launcher gets (Ctrl-C, SIGTERM, SIGHUP) are passed on
to that child, and the child ends if the launcher is killed.

The server starts on the first command (which then runs here, as without a server), listens
on ``$USHER_HOME/ush.sock`` (in a directory only its user may write; the socket mode 0600;
each side checks the other's uid), and ends after :data:`IDLE_SECONDS` without a command,
within :data:`CHECK_SECONDS` of a change to ush's code (an upgrade), and at once when a
launcher speaks another :data:`PROTOCOL`. ``USHER_SERVER=off`` runs every command here; the
interactive shell and commands that ask for a password always run here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import sys

IDLE_SECONDS = 900.0
"""How long a server waits for the next command before it ends."""
CHECK_SECONDS = 3.0
"""How often a server looks whether ush's code changed."""
PROTOCOL = 2
"""The version of what a launcher and a server say to each other."""
LOCAL_COMMANDS = frozenset({"login", "hash-password", "ssh"})
"""Commands that need the terminal as their controlling terminal (a server's child has
none): password prompts, and ``ush ssh``, which becomes ``ssh`` (exec) and may ask for a
key's passphrase."""
GLOBAL_OPTIONS_WITH_VALUES = frozenset({"--url", "--token", "--remote", "-o", "--output"})
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
SOCKET_NAME = "ush.sock"
MAX_SOCKET_PATH = 100
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command_named(args: list[str]) -> str | None:
    """The command ``args`` run (the first word after ush's own options), if any."""
    words = iter(args)
    for word in words:
        if word in GLOBAL_OPTIONS_WITH_VALUES:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def socket_path(env: dict[str, str] | os._Environ[str]) -> str:
    """Where the server of this user (and ``USHER_HOME``) listens."""
    home = env.get("USHER_HOME") or os.path.join(os.path.expanduser("~"), ".usher")
    return os.path.join(os.path.abspath(home), SOCKET_NAME)


def private_dir(path: str) -> bool:
    """Whether ``path`` is a directory (not a link) of this user that nobody else may
    write: where a socket can be trusted to be the user's own."""
    try:
        found = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(found.st_mode)
        and found.st_uid == os.getuid()
        and not found.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def code_stamp() -> float:
    """The newest modification time of ush's code: a server older than it is stale."""
    newest = 0.0
    pending = [_PACKAGE]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.name.endswith(".py"):
                    newest = max(newest, entry.stat().st_mtime)
                elif entry.is_dir() and entry.name != "__pycache__":
                    pending.append(entry.path)
    return newest


def _wanted(argv: list[str]) -> bool:
    """Whether this command may run in the server (not the shell, not a password prompt)."""
    if os.environ.get("USHER_SERVER", "on") == "off":
        return False
    command = command_named(argv)
    return command is not None and command not in LOCAL_COMMANDS


def _run_here() -> None:
    from usher.cli.ush import main as run

    run()


def _start_server(path: str) -> None:
    """Start a server in the background for the next commands (this one runs here)."""
    import subprocess

    home = os.path.dirname(path)
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
        if not private_dir(home):
            return  # another user could listen in there: no server
        subprocess.Popen(  # -P: never import from the directory it was started in
            [sys.executable, "-P", "-m", "usher.cli.ush_server", path],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        pass  # no server: every command runs here


def _request(argv: list[str], cwd: str) -> bytes:
    umask = os.umask(0o022)
    os.umask(umask)
    streams = {
        name: [stream.encoding, stream.errors]
        for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout), ("stderr", sys.stderr))
        if stream is not None
    }
    ignored = [int(s) for s in FORWARDED_SIGNALS if signal.getsignal(s) is signal.SIG_IGN]
    return json.dumps(
        {
            "protocol": PROTOCOL,
            "argv": argv,
            "env": dict(os.environ),
            "cwd": cwd,
            "umask": umask,
            "streams": streams,
            "ignored": ignored,
        }
    ).encode()


def _ask_server(path: str, argv: list[str]) -> int | None:
    """Run ``argv`` in the server at ``path``: its exit status, or None if there is no
    (current, trustworthy) server to run it."""
    if len(path) > MAX_SOCKET_PATH or not private_dir(os.path.dirname(path)):
        return None
    try:
        cwd = os.getcwd()
    except OSError:  # a directory deleted under the shell: run here, as Python would
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        try:
            conn.connect(path)
            if peer_uid(conn) != os.getuid():
                return None
            request = _request(argv, cwd)
            socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
            conn.sendall(request)
        except OSError:
            return None
        return _follow(conn)


def _follow(conn: socket.socket) -> int | None:
    """Read the server's answers: the pid of the child that runs the command (the signals
    the launcher gets go to it), then its exit status."""
    child: int | None = None
    forwarded: list[int] = []

    def pass_on(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        if child is not None:
            os.kill(child, signum)

    try:
        for line in conn.makefile("rb"):
            answer = json.loads(line)
            if answer.get("stale"):
                return None
            if "pid" in answer:
                child = int(answer["pid"])
                for signum in FORWARDED_SIGNALS:
                    if signal.getsignal(signum) is not signal.SIG_IGN:
                        signal.signal(signum, pass_on)
            if "exit" in answer:
                return int(answer["exit"])
    except OSError:
        pass
    if child is None:  # refused before anything ran: run it here
        return None
    if forwarded:  # it ended of the signal passed on, as it would have here
        return 128 + forwarded[-1]
    sys.stderr.write("error: the ush server ended before the command did\n")
    return 1


def main() -> None:
    argv = sys.argv[1:]
    if _wanted(argv):
        path = socket_path(os.environ)
        status = _ask_server(path, argv)
        if status is not None:
            sys.exit(status)
        if len(path) <= MAX_SOCKET_PATH:
            _start_server(path)
    _run_here()


if __name__ == "__main__":
    main()
