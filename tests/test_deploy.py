"""docs/deploy.md, walked through: a controller with PostgreSQL and two LNMs installed with
``usher install`` on three hosts (network and mount namespaces, :mod:`site_hosts`), joined
over TLS with a join token, sharing storage, and a real guest live-migrated between them."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import wait_for
from site_hosts import STORAGE, Host, site_hosts
from usher.images.tiny import build_tiny
from usher.install.units import render

DOC = Path(__file__).parent.parent / "docs" / "deploy.md"
BLOCK = re.compile(r"<!-- site-test: (ctrl|lnm) -->\n```sh\n(.*?)```", re.S)
USHER_UID = 960
HEARTBEAT = re.compile(r"usher-heartbeat (\d+)")
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def doc_steps() -> list[tuple[str, str]]:
    """The ``site-test`` blocks of docs/deploy.md in order: (the host role, the commands)."""
    steps = BLOCK.findall(DOC.read_text())
    assert [role for role, _ in steps].count("lnm") >= 1, "deploy.md lost its LNM steps"
    return steps


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for role, groups in (("ctrl", []), ("lnm", ["kvm"])):
        unit = tmp_path / f"usher-{role}.service"
        unit.write_text(
            render(
                role,  # type: ignore[arg-type]
                usher=Path(sys.prefix) / "bin" / "usher",
                user="usher",
                storage=Path(STORAGE),
                config_dir=Path("/etc/usher"),
                groups=groups,
            )
        )
        done = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_a_unit_with_a_missing_executable_fails_the_check(tmp_path: Path) -> None:
    """The check above can fail: the same verify refuses a unit whose program is missing."""
    unit = tmp_path / "usher-ctrl.service"
    unit.write_text(
        render(
            "ctrl",
            usher=tmp_path / "no-such-usher",
            user="usher",
            storage=Path(STORAGE),
            config_dir=Path("/etc/usher"),
        )
    )
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode != 0 and "no-such-usher" in done.stderr


def _processes_in(host: Host) -> list[int]:
    inode = os.readlink(f"/proc/{host.holder.pid}/ns/net")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != host.holder.pid:
            try:
                if os.readlink(entry / "ns/net") == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _kill_all(hosts: list[Host]) -> None:
    """Whatever still runs in the hosts (daemons, guests, PostgreSQL) is killed."""
    for host in hosts:
        for pid in _processes_in(host):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                continue


def _start_postgres(host: Host) -> None:
    """PostgreSQL on the controller host, as Debian's package leaves it: a cluster owned by
    ``postgres``, peer authentication on the socket in /run/postgresql, port 5432 (which
    Debian's wrappers of ``createuser`` and the like read from /etc/postgresql)."""
    for conf in host.file("/etc/postgresql").glob("*/main/postgresql.conf"):
        conf.write_text(re.sub(r"(?m)^port\s*=.*$", "port = 5432", conf.read_text()))
    host.sh(
        f"""
        install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/main
        install -d -o postgres -g postgres -m 2775 /run/postgresql
        cd /
        runuser -u postgres -- {PG_BIN}/initdb -D /var/lib/postgresql/main \
            --auth-local=peer --auth-host=scram-sha-256 >/dev/null
        runuser -u postgres -- {PG_BIN}/pg_ctl -D /var/lib/postgresql/main -w \
            -l /var/lib/postgresql/main/log \
            -o "-k /run/postgresql -c listen_addresses=''" start >/dev/null
        """
    )


def _copy(source: Host, path: str, target: Host, name: str) -> None:
    """``scp`` between hosts: ``path`` on ``source`` becomes /root/``name`` on ``target``."""
    data = source.file(path).read_bytes()
    dest = target.file(f"/root/{name}")
    dest.write_bytes(data)
    dest.chmod(0o600)


def _ush(host: Host, *args: str) -> object:
    done = host.sh("/opt/usher/bin/ush " + " ".join(args) + " -o json")
    return json.loads(done.stdout)


def _owner(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def _daemon_pid(host: Host, unit: str) -> int:
    return int(host.sh(f"systemctl show -p MainPID --value {unit}").stdout)


def _can_write(host: Host, unit: str, directory: str) -> bool:
    """Can ``unit``'s process, as its user in its mount namespace and environment, make a file
    in ``directory`` (a shell word, expanded there)?"""
    pid = _daemon_pid(host, unit)
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = " ".join(shlex.quote(v.decode()) for v in environ if v)
    done = host.sh(
        f"nsenter --target={pid} --mount --root --setuid={USHER_UID} --setgid={USHER_UID} -- "
        f"env -i {env} sh -c 'f=$(mktemp -p {directory}) && rm \"$f\"'",
        check=False,
    )
    return done.returncode == 0


def _qemu_pids(host: Host) -> list[int]:
    return [
        pid
        for pid in _processes_in(host)
        if "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    ]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[list[Host]]:
    storage = tmp_path / "storage"
    build_tiny(storage)
    for path in [storage, *storage.rglob("*")]:
        os.chown(path, USHER_UID, USHER_UID, follow_symlinks=False)
    subnet = f"10.{random.randint(150, 199)}.{random.randint(1, 254)}"
    prefix = f"ud{random.randint(1000, 9999)}"
    with site_hosts(prefix, subnet, ["ctrl", "node1", "node2"], tmp_path / "hosts", storage) as h:
        try:
            yield h
        finally:
            _kill_all(h)


def test_deploy_md_installs_a_site_that_live_migrates(site: list[Host]) -> None:
    ctrl, *nodes = site
    _start_postgres(ctrl)
    env = {"CTRL": ctrl.name}
    copied = False
    for role, script in doc_steps():
        if role == "ctrl":
            ctrl.sh(script, env, timeout=110)
            continue
        for node in nodes:
            if not copied:  # what the page says to scp over
                _copy(ctrl, "/root/join.token", node, "join.token")
                _copy(ctrl, "/var/lib/usher/tls/ca.pem", node, "ca.pem")
            node.sh(script, {**env, "NODE": node.name}, timeout=110)
        copied = True

    # the page's last step migrated "first" to node2: it runs there, booted once
    vm = _ush(ctrl, "show", "first")
    assert isinstance(vm, dict)
    assert (vm["node"], vm["state"]) == ("node2", "running"), vm
    assert len(_qemu_pids(nodes[1])) == 1 and not _qemu_pids(nodes[0])

    # the daemons run as the service user, with the files the page promises
    for host, unit in ((ctrl, "usher-ctrl"), *((n, "usher-lnm") for n in nodes)):
        assert _owner(_daemon_pid(host, unit)) == USHER_UID, f"{unit} on {host.name} runs as root"
    # each runs in the units' sandbox: a read-only system, its state and the storage writable
    for host, unit in ((ctrl, "usher-ctrl"), (nodes[0], "usher-lnm")):
        assert _can_write(host, unit, "/var/lib/usher/storage") is True
        assert _can_write(host, unit, "$STATE_DIRECTORY") is True
        assert _can_write(
            host, unit, '"$(python3 -c "import tempfile; print(tempfile.gettempdir())")"'
        )
    assert _can_write(nodes[0], "usher-lnm", "/tmp") is False, "ProtectSystem=strict not applied"
    token = nodes[0].file("/etc/usher/join.token").stat()
    assert (token.st_uid, token.st_mode & 0o777) == (USHER_UID, 0o600)
    assert nodes[0].file("/var/lib/usher-lnm/node.credential").exists()
    assert "postgresql" in ctrl.file("/etc/usher/ctrl.toml").read_text()
    assert not ctrl.file("/var/lib/usher/usher.db").exists(), "the state went to SQLite"

    # an LNM restart leaves its guest running (KillMode=process) and the node comes back
    guest = _qemu_pids(nodes[1])
    old_lnm = _daemon_pid(nodes[1], "usher-lnm")
    nodes[1].sh("systemctl restart usher-lnm")
    assert _daemon_pid(nodes[1], "usher-lnm") != old_lnm
    assert _qemu_pids(nodes[1]) == guest, "the LNM's restart ended its guest"

    def node2_back() -> bool:
        listed = _ush(ctrl, "nodes")
        assert isinstance(listed, list)
        return any(n["name"] == "node2" and n["state"] == "up" for n in listed)

    wait_for("node2 back after its LNM restarted", node2_back, timeout=30)
    back = _ush(ctrl, "show", "first")
    assert isinstance(back, dict) and (back["node"], back["state"]) == ("node2", "running")

    # the guest runs on through all that: it booted once, and its heartbeat goes on
    def console() -> str:
        return ctrl.sh("/opt/usher/bin/ush console first").stdout

    wait_for("the guest's boot", lambda: "USHER-READY" in console(), timeout=30)
    before = max(int(n) for n in HEARTBEAT.findall(console()) or ["0"])
    nodes[1].sh("systemctl restart usher-lnm")
    wait_for("node2 back after a second restart", node2_back, timeout=30)

    def beating() -> bool:
        text = console()
        assert text.count("USHER-READY") == 1, f"the guest booted again:\n{text}"
        return max(int(n) for n in HEARTBEAT.findall(text) or ["0"]) > before + 1

    wait_for("the guest's heartbeat going on", beating, timeout=20)

    # and back to node1, booted and beating: a live migration between the two hosts
    before = max(int(n) for n in HEARTBEAT.findall(console()))
    ctrl.sh("/opt/usher/bin/ush migrate first --to node1")
    moved = _ush(ctrl, "show", "first")
    assert isinstance(moved, dict) and (moved["node"], moved["state"]) == ("node1", "running")
    assert len(_qemu_pids(nodes[0])) == 1
    wait_for("the source's QEMU gone", lambda: not _qemu_pids(nodes[1]), timeout=10)
    wait_for("the guest's heartbeat going on after the migration", beating, timeout=20)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """One host of its own (its own /etc, /var/lib, /run, /root, /opt)."""
    subnet = f"10.{random.randint(150, 199)}.{random.randint(1, 254)}"
    storage = tmp_path / "storage"
    storage.mkdir()
    with site_hosts(
        f"ui{random.randint(1000, 9999)}", subnet, ["solo"], tmp_path / "hosts", storage
    ) as (solo,):
        try:
            yield solo
        finally:
            _kill_all([solo])


LNM = "/opt/usher/bin/usher install lnm --ctrl https://solo:8760 --join-token-file /root/t"


def test_usher_install_refuses_bad_input_and_writes_nothing(host: Host) -> None:
    host.file("/root/t").write_text("tok-abc.secret\n")
    host.file("/root/empty").write_text("\n")
    host.file("/root/binary").write_bytes(b"\x00\xff" * 100)
    refused = {
        f"{LNM} --name 'bad name'": "is not a node name",
        f"{LNM} --name {'n' * 64}": "is not a node name",
        f"{LNM} --driver '../x'": "is not a driver name",
        f"{LNM} --driver-option nokey": "is not KEY=VALUE",
        LNM.replace("/root/t", "/root/empty"): "does not hold a join token",
        LNM.replace("/root/t", "/root/binary"): "",
        LNM.replace("https://solo:8760", "ftp://solo"): "expected https://HOST:PORT",
        "/opt/usher/bin/usher install ctrl --user root": "never as root",
        "/opt/usher/bin/usher install ctrl --user 'a:b'": "is not a user name",
        "/opt/usher/bin/usher install ctrl --listen nonsense": "is not HOST:PORT",
        "/opt/usher/bin/usher install ctrl --listen 0.0.0.0:99999": "is not HOST:PORT",
        "/opt/usher/bin/usher install ctrl --name 'a b'": "is not a host name",
        "/opt/usher/bin/usher install ctrl --name $'x\\ny'": "is not a host name",
    }
    for command, message in refused.items():
        done = host.sh(command, check=False)
        assert done.returncode != 0, command
        assert message in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert not host.file("/etc/usher").exists(), "a refused install wrote files"
    assert "usher:" not in host.file("/etc/passwd").read_text()


def test_usher_install_keeps_configs_rewrites_units_and_checks_the_uid(host: Host) -> None:
    host.file("/root/t").write_text("tok-abc.secret\n")
    first = host.sh(f"{LNM} --uid 970 --name solo --driver fake --driver-option latency=0.5")
    assert "wrote /etc/usher/lnm.toml" in first.stdout
    config = host.file("/etc/usher/lnm.toml")
    config.write_text(config.read_text() + "vcpus = 3\n")  # the site's own change
    unit = host.file("/etc/systemd/system/usher-lnm.service")
    unit.write_text("stale\n")
    again = host.sh(f"{LNM} --uid 970 --name solo")
    assert "kept /etc/usher/lnm.toml" in again.stdout
    assert "vcpus = 3" in config.read_text()
    assert "ExecStart=" in unit.read_text() and "KillMode=process" in unit.read_text()
    clash = host.sh(f"{LNM} --uid 971", check=False)
    assert clash.returncode != 0 and "exists with uid 970, not 971" in clash.stderr
    host.sh(f"{LNM} --uid 970 --name other --force")
    assert '"other"' in config.read_text() and "vcpus = 3" not in config.read_text()
    # the LNM reads the file back: a bad key or type is a clear error, flags win
    config.write_text(config.read_text() + "colour = 'blue'\n")
    bad = host.sh("/opt/usher/bin/usher lnm --config /etc/usher/lnm.toml", check=False)
    assert bad.returncode == 2 and "unknown key 'colour'" in bad.stderr, bad.stderr


def test_usher_install_refuses_odd_files_urls_and_paths(host: Host) -> None:
    """Inputs that would hang the installer, break a unit's syntax or a config's meaning are
    refused with a message, before anything is written."""
    host.file("/root/t").write_text("tok-abc.secret\n")
    host.file("/root/huge").write_text("x" * 5000)
    host.file("/root/dir").mkdir()
    os.mkfifo(host.file("/root/fifo"))  # nobody writes it: reading it would wait for ever
    host.file("/root/ca.pem").write_text("not a certificate\n")
    refused = {
        LNM.replace("/root/t", "/root/fifo"): "is not a regular file",
        LNM.replace("/root/t", "/root/dir"): "is not a regular file",
        LNM.replace("/root/t", "/dev/zero"): "is not a regular file",
        LNM.replace("/root/t", "/root/huge"): "is larger than 4096 bytes",
        LNM.replace("/root/t", "/root/missing"): "cannot read /root/missing",
        f"{LNM} --ca-file /root/ca.pem": "holds no PEM certificate",
        f"{LNM} --ca-file /root/fifo": "is not a regular file",
        LNM.replace("solo:8760", "solo:99999"): "expected https://HOST:PORT",
        LNM.replace("solo:8760", "admin:pw@solo:8760"): "expected https://HOST:PORT",
        LNM.replace("solo:8760", "solo:8760/x?y=1"): "expected https://HOST:PORT",
        f"{LNM} --migration-host 'a,b'": "is not a host name or address",
        f"{LNM} --storage-dir 'shared'": "is not an absolute path",
        f"{LNM} --storage-dir '/srv/a b'": "is not an absolute path",
        f"{LNM} --storage-dir $'/srv/a\\nExecStartPre=/bin/true'": "is not an absolute path",
        f"{LNM} --storage-dir /srv/%h": "is not an absolute path",
        f"{LNM} --storage-dir /srv/../etc": "is not an absolute path",
        "/opt/usher/bin/usher install ctrl --storage-dir '/srv/a b'": "is not an absolute path",
        "/opt/usher/bin/usher install lnm --name solo": "needs --ctrl and --join-token-file",
    }
    for command, message in refused.items():
        done = host.sh(command, check=False, timeout=20)
        assert done.returncode != 0, command
        assert message in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
    assert not host.file("/etc/usher").exists(), "a refused install wrote files"
    assert "usher:" not in host.file("/etc/passwd").read_text()


def test_usher_install_ctrl_owns_its_state_dir_not_the_storage_below(host: Host) -> None:
    """systemd chowns a StateDirectory recursively when its top is not the service user's:
    with the storage mounted below /var/lib/usher that would be every VM's disk over NFS. The
    admin's `mkdir -p /var/lib/usher/storage` made the top root's; the install takes it."""
    state = host.file("/var/lib/usher/storage").parent
    assert state.stat().st_uid == 0
    host.sh("/opt/usher/bin/usher install ctrl --uid 970 --name solo")
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (970, 0o700)
    assert host.file("/var/lib/usher/storage").stat().st_uid != 970  # the storage: untouched


def test_usher_install_again_for_an_upgrade_needs_no_token(host: Host) -> None:
    """An upgrade runs `usher install lnm` again after the join token was used up and
    removed: the kept config needs neither --ctrl nor a token, and the new unit names the
    storage that config names."""
    host.file("/root/t").write_text("tok-abc.secret\n")
    host.sh(f"{LNM} --uid 970 --name solo --storage-dir /var/lib/usher/storage/site")
    host.file("/root/t").unlink()
    unit = host.file("/etc/systemd/system/usher-lnm.service")
    unit.write_text("stale\n")
    again = host.sh("/opt/usher/bin/usher install lnm --uid 970")
    assert "kept /etc/usher/lnm.toml" in again.stdout
    assert "ReadWritePaths=/var/lib/usher/storage/site\n" in unit.read_text()
    assert "RequiresMountsFor=/var/lib/usher/storage/site\n" in unit.read_text()
    token = host.file("/etc/usher/join.token")
    assert token.read_text() == "tok-abc.secret\n"


def test_usher_lnm_config_refuses_dates_and_mangled_labels(tmp_path: Path) -> None:
    base = 'ctrl = "https://solo:8760"\nname = "n"\ndriver = "fake"\n'
    cases = {
        "driver_options = {a = 1979-05-27}": "JSON cannot carry",
        'labels = {"a,b" = "c"}': "without ',' or '='",
        'labels = {a = "b=c"}': "without ',' or '='",
        "labels = {a = [1]}": "without ',' or '='",
    }
    for extra, message in cases.items():
        config = tmp_path / "lnm.toml"
        config.write_text(base + extra + "\n")
        done = subprocess.run(
            [Path(sys.prefix) / "bin" / "usher", "lnm", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2 and message in done.stderr, (extra, done.stderr)
        assert "Traceback" not in done.stderr


def test_the_lnm_unit_leaves_its_guests_alone() -> None:
    """The guests' QEMUs live in the LNM's cgroup: the unit's stop, task limit and OOM policy
    apply to them too, so none of them may end or cap the guests."""
    unit = render(
        "lnm",
        usher=Path("/opt/usher/bin/usher"),
        user="usher",
        storage=Path(STORAGE),
        config_dir=Path("/etc/usher"),
    )
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line[:30])
    assert settings["KillMode"] == "process"
    assert settings["TasksMax"] == "infinity"  # the default, 15% of pid_max, caps QEMU threads
    assert settings["OOMPolicy"] == "continue"  # stop: one guest's OOM kill would stop the LNM
