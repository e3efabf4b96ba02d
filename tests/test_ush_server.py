"""The ``ush`` command as installed (its launcher) with its warm server: the same answers,
exit statuses and terminal as without it; Ctrl-C reaches the command; only its user gets in;
it ends when idle, when the command it runs is killed, and when another version asks."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import Cluster, wait_for

pytestmark = pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
USH = str(Path(sys.executable).parent / "ush")


def processes() -> dict[int, tuple[int, str]]:
    """Every live process (zombies left out): pid → (parent's pid, command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), line)
    return found


def children_of(pid: int) -> list[int]:
    return [child for child, (parent, _line) in processes().items() if parent == pid]


class Ush:
    """Runs the installed ``ush`` as a user would, with its own USHER_HOME (so its own
    server), against ``cluster``."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.home = home
        self.env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(home),
            "USHER_HOME": str(home),
            "USHER_URL": cluster.url,
            "USHER_TOKEN": cluster.token,
            "USHER_SERVER_IDLE": "30",
            "COLUMNS": "200",
        }
        if cluster.tls:
            self.env["USHER_CA_FILE"] = str(cluster.ca)

    @property
    def socket(self) -> Path:
        return self.home / "ush.sock"

    def __call__(self, *args: str, **options: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [USH, *args], env=self.env, capture_output=True, text=True, timeout=60, **options
        )

    def server_pids(self) -> list[int]:
        """The server's pid (and its children's: they share its command line)."""
        wanted = f"usher.cli.ush_server {self.socket}"
        return [pid for pid, (_ppid, line) in processes().items() if wanted in line]

    def warm(self) -> None:
        """Make sure a server answers (the first command starts it and runs by itself)."""
        self("whoami")
        wait_for("the ush server", self.socket.exists, timeout=30)
        wait_for("the ush server to answer", lambda: self.answers(), timeout=30)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as conn:
            try:
                conn.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        for pid in self.server_pids():
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def ush(shared_cluster: Cluster, tmp_path: Path) -> Iterator[Ush]:
    runner = Ush(shared_cluster, tmp_path / "home")
    yield runner
    runner.stop()


def test_the_server_answers_as_ush_does_without_it(ush: Ush, shared_cluster: Cluster) -> None:
    ush.warm()
    assert ush.server_pids(), "no server started"
    assert stat.S_IMODE(ush.socket.stat().st_mode) == 0o600
    here = dict(ush.env, USHER_SERVER="off")
    for args in (["list"], ["images", "-o", "json"], ["show", "nosuch"], ["nosuch"], ["--help"]):
        served = ush(*args)
        alone = subprocess.run([USH, *args], env=here, capture_output=True, text=True)
        assert (served.returncode, served.stdout, served.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        ), args
    assert ush("show", "nosuch").returncode == 1 and ush("nosuch").returncode == 2
    # a relative path is the launcher's, not the server's
    (ush.home / "disk.raw").write_bytes(b"\0" * 65536)
    imported = ush("image", "import", "disk.raw", "--name", "relative", cwd=ush.home)
    assert imported.returncode == 0, imported.stderr
    assert ush("image", "rm", "relative").returncode == 0


def test_many_commands_at_once(ush: Ush, shared_cluster: Cluster) -> None:
    ush.warm()
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda _: ush("nodes", "-o", "json"), range(24)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert {len(json.loads(r.stdout)) for r in results} == {3}


def test_ctrl_c_reaches_the_command(ush: Ush, shared_cluster: Cluster) -> None:
    ush.warm()
    watching = subprocess.Popen(
        [USH, "list", "--watch"], env=ush.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(2)
    assert watching.poll() is None
    watching.send_signal(signal.SIGINT)
    assert watching.wait(10) == 0  # `list --watch` ends on Ctrl-C as it does without a server
    assert b"NAME" in watching.stdout.read()  # type: ignore[union-attr]


def test_a_command_killed_in_the_server_fails_in_the_launcher(ush: Ush) -> None:
    ush.warm()
    server = ush.server_pids()[0]
    watching = subprocess.Popen(
        [USH, "list", "--watch"], env=ush.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    children: list[int] = []

    def child_runs() -> bool:
        children[:] = children_of(server)
        return bool(children)

    wait_for("the command's process in the server", child_runs, timeout=10)
    os.kill(children[0], signal.SIGKILL)
    assert watching.wait(10) == 1
    assert b"the ush server ended before the command did" in watching.stderr.read()  # type: ignore[union-attr]
    assert ush("nodes").returncode == 0  # the server goes on


def test_only_its_own_user_gets_in(ush: Ush) -> None:
    ush.warm()
    nobody = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "python3",
            "-c",
            f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(ush.socket)!r})",
        ],
        capture_output=True,
        text=True,
    )
    assert nobody.returncode != 0 and "Permission denied" in nobody.stderr


def test_a_launcher_of_another_version_replaces_the_server(ush: Ush) -> None:
    ush.warm()
    [old] = ush.server_pids()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(ush.socket))
        request = json.dumps({"argv": ["list"], "env": {}, "cwd": "/", "protocol": 0}).encode()
        socket.send_fds(conn, [struct.pack("!I", len(request))], [0, 1, 2])
        conn.sendall(request)
        assert json.loads(conn.makefile("rb").readline()) == {"stale": True}
    wait_for("the old server to end", lambda: old not in ush.server_pids(), timeout=10)
    assert ush("nodes").returncode == 0  # runs by itself, and starts a new server
    wait_for("a new server", lambda: ush.server_pids() not in ([], [old]), timeout=30)


def test_an_idle_server_ends(ush: Ush) -> None:
    ush.env["USHER_SERVER_IDLE"] = "1"
    ush.warm()
    wait_for("the idle server to end", lambda: not ush.server_pids(), timeout=15)
    assert not ush.socket.exists()
    assert ush("nodes").returncode == 0  # runs by itself


def test_the_command_runs_as_the_launcher_would_time_zone_umask_signals(
    ush: Ush, shared_cluster: Cluster, tmp_path: Path
) -> None:
    ush.warm()
    here = dict(ush.env, USHER_SERVER="off")
    tokyo = {"TZ": "Asia/Tokyo"}
    served = subprocess.run(
        [USH, "nodes"], env={**ush.env, **tokyo}, capture_output=True, text=True
    )
    alone = subprocess.run([USH, "nodes"], env={**here, **tokyo}, capture_output=True, text=True)
    assert served.stdout == alone.stdout
    pages = tmp_path / "man"
    subprocess.run(["sh", "-c", f"umask 077; {USH} man --dir {pages}"], env=ush.env, check=True)
    assert stat.S_IMODE(pages.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in pages.iterdir()} == {0o600}
    # SIGTERM ends the command as it would end it here (128 + 15)
    watching = subprocess.Popen([USH, "list", "--watch"], env=ush.env, stdout=subprocess.DEVNULL)
    time.sleep(2)
    watching.send_signal(signal.SIGTERM)
    assert watching.wait(10) == 143


def test_a_killed_launcher_takes_its_command_with_it(ush: Ush) -> None:
    ush.warm()
    [server] = ush.server_pids()
    following = subprocess.Popen(
        [USH, "events", "--follow"], env=ush.env, stdout=subprocess.DEVNULL
    )

    wait_for("the command's process in the server", lambda: children_of(server), timeout=10)
    following.kill()
    following.wait()
    wait_for("the command to end with its launcher", lambda: not children_of(server), timeout=10)


def test_no_server_where_others_could_listen_or_plant_code(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a USHER_HOME anyone may write: no server, the command runs here
    open_home = Ush(shared_cluster, shared)
    assert open_home("nodes").returncode == 0
    time.sleep(1)
    assert not open_home.socket.exists() and not open_home.server_pids()

    # a module planted where the first command runs is never imported by the server
    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "imported"
    for module in ("click", "stringprep", "json"):
        (project / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module}')\n")
    runner = Ush(shared_cluster, tmp_path / "home")
    try:
        assert runner("nodes", cwd=project).returncode == 0
        runner.warm()
        assert runner("nodes", "-o", "json", cwd=project).returncode == 0
        assert not marker.exists(), marker.read_text()
    finally:
        runner.stop()


def test_off_runs_every_command_in_the_launcher(ush: Ush) -> None:
    ush.env["USHER_SERVER"] = "off"
    assert ush("nodes").returncode == 0
    time.sleep(1)
    assert not ush.server_pids() and not ush.socket.exists()
