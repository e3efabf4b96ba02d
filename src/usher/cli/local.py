"""``usher local``: a controller and N LNMs on this machine, state under one directory."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx

from usher.cli.local_cluster import CA_FILE, PIDFILE, URL_FILE, default_state
from usher.client.config import add_remote
from usher.ctrl.config import ADMIN_TOKEN_FILE, DEFAULT_PORT, load_settings
from usher.ctrl.tls import base_url, ca_file
from usher.vmm.base import installed_drivers

if TYPE_CHECKING:
    from usher.vmm.libvirt_daemon import LibvirtHost

DEFAULT_STATE = default_state()
JOIN_TOKEN_FILE = "join.token"
KEEP_VMS = "keep-vms"


def _usher(*args: str) -> list[str]:
    return [sys.executable, "-m", "usher.cli.usher_cmd", *args]


def _http(url: str, ca: Path | None, token: str | None = None) -> httpx.Client:
    """A client for the controller at ``url``, verifying its certificate with ``ca``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify = ssl.create_default_context(cafile=ca) if ca else True
    return httpx.Client(base_url=url, headers=headers, verify=verify, timeout=10)


def _wait_ready(
    url: str, ca: Path | None, token_file: Path, proc: subprocess.Popen[bytes], timeout: float
) -> str:
    """Wait until the controller answers with its admin token; return the token."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = token_file.parent.parent / "logs" / "ctrl.log"
            raise click.ClickException(f"the controller exited at start; see {log}")
        if token_file.exists() and (ca is None or ca.exists()):
            token = token_file.read_text().strip()
            try:
                with _http(url, ca, token) as http:
                    if http.get("/v1/whoami", timeout=2).status_code == 200:
                        return token
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise click.ClickException(f"the controller did not answer at {url} in {timeout:.0f} s")


def _join_token(http: httpx.Client, state: Path, uses: int) -> Path:
    """A join token for this run's LNMs (nodes that joined before use their credential)."""
    r = http.post("/v1/nodes/join-tokens", json={"ttl": 600, "uses": uses})
    if r.is_error:
        raise click.ClickException(f"cannot get a join token: {r.text}")
    path = state / JOIN_TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(r.json()["token"] + "\n")
    return path


def _power_off_vms(state: Path) -> None:
    """Stop every running or paused VM through the controller, so no guest outlives the
    cluster (guests are detached from their LNM and would otherwise keep running)."""
    from usher.client import Client, UsherError
    from usher.model import VMState

    try:
        url = (state / URL_FILE).read_text().strip()
        token = (state / "ctrl" / ADMIN_TOKEN_FILE).read_text().strip()
        ca = (state / CA_FILE).read_text().strip() if (state / CA_FILE).exists() else None
        with Client(url, token, timeout=30, ca_file=ca) as client:
            live = [
                vm.id for vm in client.iter_vms() if vm.state in (VMState.RUNNING, VMState.PAUSED)
            ]
            if live:
                click.echo(f"stopping {len(live)} VMs…")
                op = client.wait(client.stop(live, kwargs={"timeout": 10}), timeout=120)
                if op.error:
                    click.echo(f"warning: {op.error}", err=True)
    except (OSError, UsherError) as exc:
        click.echo(f"warning: could not stop the VMs first: {exc}", err=True)


def _stop(state: Path, keep_vms: bool) -> None:
    pidfile = state / PIDFILE
    if not pidfile.exists():
        raise click.ClickException(f"no local cluster runs from {state}")
    if keep_vms:
        (state / KEEP_VMS).touch()  # libvirt nodes: their daemons (and guests) run on
    else:
        _power_off_vms(state)
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        click.echo("the local cluster was not running")
        return
    for _ in range(200):
        if not pidfile.exists():
            break
        time.sleep(0.05)
    click.echo(f"stopped the local cluster of {state}")


@click.command()
@click.option(
    "--nodes",
    "n_nodes",
    type=click.IntRange(min=1, max=64),
    default=3,
    show_default=True,
    help="How many LNMs to run.",
)
@click.option(
    "--driver",
    default="fake",
    show_default=True,
    callback=lambda _ctx, _param, value: _installed_driver(value),
    help="The VMM driver of the nodes (fake, qemu, libvirt, or a site's own installed one).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--vcpus", type=int, default=16, show_default=True, help="vCPUs per node.")
@click.option("--memory-mb", type=int, default=32768, show_default=True, help="Memory per node.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="Controller TOML config.",
)
@click.option("--detach", is_flag=True, help="Run in the background and return.")
@click.option("--stop", "stop_", is_flag=True, help="Stop the cluster started with --detach.")
@click.option("--keep-vms", is_flag=True, help="With --stop: leave the guests running.")
def local(
    n_nodes: int,
    driver: str,
    state_dir: Path,
    port: int,
    vcpus: int,
    memory_mb: int,
    config_file: str | None,
    detach: bool,
    stop_: bool,
    keep_vms: bool,
) -> None:
    """Run a controller and N LNMs on this machine (the single-host default and the demo)."""
    state = state_dir.resolve()
    if stop_:
        _stop(state, keep_vms)
        return
    _check_port_free(port)
    state.mkdir(parents=True, exist_ok=True)
    pidfile = state / PIDFILE
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text()), 0)
            raise click.ClickException(
                f"a local cluster already runs from {state} (usher local --stop to end it)"
            )
        except (ProcessLookupError, ValueError):
            pidfile.unlink()
    _ensure_tiny_image(state / "storage")
    if detach:
        args = [a for a in sys.argv[1:] if a != "--detach"]
        log = open(state / "local.log", "ab")  # noqa: SIM115 - handed to the child
        child = subprocess.Popen(
            _usher(*args), stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        for _ in range(600):
            if (state / "ready").exists():
                break
            if child.poll() is not None:
                raise click.ClickException(f"usher local failed; see {state / 'local.log'}")
            time.sleep(0.1)
        click.echo((state / "ready").read_text(), nl=False)
        return
    _run(state, n_nodes, driver, port, vcpus, memory_mb, config_file)


def _installed_driver(name: str) -> str:
    if name not in installed_drivers():
        raise click.BadParameter(
            f"no driver {name!r} is installed; installed: {', '.join(installed_drivers())}"
        )
    return name


def _check_port_free(port: int) -> None:
    """Refuse at once (before anything is built or started) a port something listens on."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise click.ClickException(
                f"port {port} on 127.0.0.1 is in use ({exc.strerror}): pick another with "
                "--port, or stop what listens there (`usher local --stop` if it is an earlier "
                "local cluster)"
            ) from None


def _ensure_tiny_image(storage: Path) -> None:
    """The standard test guest, built once from Debian packages (``usher image build tiny``)."""
    from usher.images import catalog
    from usher.images.tiny import build_tiny

    if catalog.read_manifest(storage, "tiny") is None:
        click.echo("building the tiny guest image from Debian packages…", err=True)
        build_tiny(storage, progress=lambda step: click.echo(f"  {step}", err=True))


def _run(
    state: Path,
    n_nodes: int,
    driver: str,
    port: int,
    vcpus: int,
    memory_mb: int,
    config_file: str | None,
) -> None:
    (state / "ready").unlink(missing_ok=True)
    (state / PIDFILE).write_text(str(os.getpid()))
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    storage = state / "storage"
    options = {"state_dir": str(state / "ctrl"), "listen": f"127.0.0.1:{port}"}
    options["storage_dir"] = str(storage)
    ctrl_args = [arg for k, v in options.items() for arg in (f"--{k.replace('_', '-')}", v)]
    if config_file:
        ctrl_args += ["--config", config_file]
    try:
        settings = load_settings(config_file, **options)  # as the controller will read them
    except Exception as exc:
        raise click.ClickException(f"bad controller config: {exc}") from exc
    url = base_url(settings)  # https unless the config says tls = false
    ca = ca_file(settings) if settings.tls else None
    (state / URL_FILE).write_text(url)
    (state / CA_FILE).unlink(missing_ok=True)
    if ca is not None:
        (state / CA_FILE).write_text(str(ca))
    procs: list[subprocess.Popen[bytes]] = []
    daemons = _libvirt_daemons(state, n_nodes) if driver == "libvirt" else {}

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(_usher(*args), stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ctrl = spawn("ctrl", ["ctrl", *ctrl_args])
        token = _wait_ready(url, ca, state / "ctrl" / ADMIN_TOKEN_FILE, ctrl, timeout=60)
        http = _http(url, ca, token)
        join_token = _join_token(http, state, n_nodes)
        lnm_tls = ["--ca-file", str(ca)] if ca else []
        lnms = [
            spawn(
                f"node-{i}",
                [
                    "lnm",
                    "--ctrl",
                    url,
                    "--name",
                    f"node-{i}",
                    "--driver",
                    driver,
                    "--state-dir",
                    str(state / "nodes" / f"node-{i}"),
                    "--storage-dir",
                    str(storage),
                    "--join-token-file",
                    str(join_token),
                    "--vcpus",
                    str(vcpus),
                    "--memory-mb",
                    str(memory_mb),
                    *lnm_tls,
                    *_libvirt_options(daemons.get(f"node-{i}")),
                ],
            )
            for i in range(1, n_nodes + 1)
        ]
        _wait_nodes(http, lnms, logs)
        name = "local" if port == DEFAULT_PORT else f"local-{port}"
        config = add_remote(
            name, {"url": url, "token": token, "ca_file": str(ca) if ca else None}, use=True
        )
        message = (
            f"Usher runs: a controller at {url} with {n_nodes} {driver} nodes "
            f"(state and logs in {state}).\n"
            f"ush uses it as remote {name!r} ({config}): try `ush nodes`, "
            "`ush start -n 4 --cluster web`, `ush list`, or just `ush` for the shell.\n"
            f"Stop it with `usher local --stop --state-dir {state}`.\n"
        )
        (state / "ready").write_text(message)
        click.echo(message, nl=False)
        while not stopping:
            if any(p.poll() is not None for p in procs):
                dead = [
                    p.args[3] if len(p.args) > 3 else "?" for p in procs if p.poll() is not None
                ]
                click.echo(f"a process of the local cluster exited ({dead}); stopping", err=True)
                break
            time.sleep(0.2)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        keep = state / KEEP_VMS
        if not keep.exists():
            for daemon in daemons.values():
                daemon.stop()
        keep.unlink(missing_ok=True)
        (state / "ready").unlink(missing_ok=True)
        (state / PIDFILE).unlink(missing_ok=True)


def _libvirt_daemons(state: Path, n_nodes: int) -> dict[str, LibvirtHost]:
    """A private libvirtd per node (:mod:`usher.vmm.libvirt_daemon`), as if each node were a
    host of its own: a live migration needs two daemons. One an earlier run left running
    (``--stop --keep-vms``) is used again, with its guests."""
    from usher.vmm.libvirt_daemon import adopt_libvirt_host, start_libvirt_host

    daemons: dict[str, LibvirtHost] = {}
    try:
        for i in range(1, n_nodes + 1):
            name = f"node-{i}"
            root = state / "nodes" / name / "libvirtd"
            daemon = adopt_libvirt_host(name, root)
            if daemon is None:
                click.echo(f"starting libvirtd for {name}…", err=True)
                daemon = start_libvirt_host(name, root)
            daemons[name] = daemon
    except (OSError, RuntimeError) as exc:
        for daemon in daemons.values():
            daemon.stop()
        raise click.ClickException(f"cannot start libvirtd: {exc}") from exc
    return daemons


def _libvirt_options(daemon: LibvirtHost | None) -> list[str]:
    """The LNM options that point its libvirt driver at its own daemon."""
    if daemon is None:
        return []
    connect = f"qemu+tcp://{{host}}:{daemon.tcp_port}/system"
    return [
        *("--driver-option", f"uri={daemon.uri}"),
        *("--driver-option", f"migrate_connect={connect}"),
    ]


def _wait_nodes(
    http: httpx.Client, lnms: list[subprocess.Popen[bytes]], logs: Path, timeout: float = 60
) -> None:
    """Wait until every LNM joined; fail at once, with the last line of its log, if one
    exits first."""
    count = len(lnms)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, lnm in enumerate(lnms, start=1):
            if lnm.poll() is not None:
                log = logs / f"node-{i}.log"
                lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
                last = lines[-1] if lines else "(no output)"
                raise click.ClickException(f"the LNM node-{i} exited at start: {last} (see {log})")
        nodes = http.get("/v1/nodes").json()
        if sum(1 for n in nodes if n["connected"]) >= count:
            return
        time.sleep(0.1)
    raise click.ClickException(f"not all {count} nodes joined in {timeout:.0f} s")
