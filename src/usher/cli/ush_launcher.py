"""What the ``ush`` command runs first: it hands the command to a warm ``ush`` server, or runs
it in this process.

Starting Python and importing ush's libraries (click, httpx, pydantic, rich) takes most of a
one-shot command's time. So, as ``dmypy`` does for mypy, a per-user server keeps them
imported (:mod:`usher.cli.ush_server`): this launcher, which imports only the standard
library's cheapest modules, passes it the command line, the environment, the working
directory and its own stdin, stdout and stderr (the file descriptors themselves, over a Unix
socket), and the server forks a child that runs the command on them, so it writes to this
terminal and reads from it as if it ran here. Ctrl-C is passed on to that child.

The server starts on the first command (which then runs here, as without a server), listens
on ``$USHER_HOME/ush.sock`` (mode 0600, for its user only), and ends after
:data:`IDLE_SECONDS` without a command, and within :data:`CHECK_SECONDS` of a change to ush's
code (an upgrade); a launcher that speaks another :data:`PROTOCOL` makes it end at once.
``USHER_SERVER=off`` runs every command here; the interactive shell and commands that ask for
a password always run here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

IDLE_SECONDS = 900.0
"""How long a server waits for the next command before it ends."""
CHECK_SECONDS = 3.0
"""How often a waiting server looks whether ush's code changed."""
PROTOCOL = 1
"""The version of what a launcher and a server say to each other."""
LOCAL_COMMANDS = frozenset({"login", "hash-password"})
"""Commands that read a password from the terminal: a server's child has no terminal."""
SOCKET_NAME = "ush.sock"
MAX_SOCKET_PATH = 100
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def socket_path(env: dict[str, str] | os._Environ[str]) -> str:
    """Where the server of this user (and ``USHER_HOME``) listens."""
    home = env.get("USHER_HOME") or os.path.join(os.path.expanduser("~"), ".usher")
    return os.path.join(os.path.abspath(home), SOCKET_NAME)


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
    """Whether this command may run in the server."""
    if os.environ.get("USHER_SERVER", "on") == "off" or not argv:
        return False
    return not any(word in LOCAL_COMMANDS for word in argv if not word.startswith("-"))


def _run_here() -> None:
    from usher.cli.ush import main as run

    run()


def _start_server(path: str) -> None:
    """Start a server in the background for the next commands (this one runs here)."""
    import subprocess

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        subprocess.Popen(
            [sys.executable, "-m", "usher.cli.ush_server", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError:
        pass  # no server: every command runs here


def _ask_server(path: str, argv: list[str]) -> int | None:
    """Run ``argv`` in the server at ``path``: its exit status, or None if there is no
    (current) server to run it."""
    if len(path) > MAX_SOCKET_PATH:
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        return None
    with conn:
        request = json.dumps(
            {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd(), "protocol": PROTOCOL}
        ).encode()
        try:
            socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
            conn.sendall(request)
        except OSError:
            return None
        return _follow(conn.makefile("rb"))


def _follow(answers: object) -> int | None:
    """Read the server's answers: the pid of the child that runs the command (Ctrl-C goes to
    it), then its exit status."""
    child = None

    def pass_on(signum: int, _frame: object) -> None:
        if child is not None:
            os.kill(child, signum)

    for line in answers:  # type: ignore[attr-defined]
        answer = json.loads(line)
        if answer.get("stale"):
            return None
        if "pid" in answer:
            child = answer["pid"]
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, pass_on)
        if "exit" in answer:
            return int(answer["exit"])
    if child is None:
        return None
    sys.stderr.write("error: the ush server ended before the command did\n")
    return 1


def main() -> None:
    argv = sys.argv[1:]
    if _wanted(argv):
        path = socket_path(os.environ)
        status = _ask_server(path, argv)
        if status is not None:
            sys.exit(status)
        _start_server(path)
    _run_here()


if __name__ == "__main__":
    main()
