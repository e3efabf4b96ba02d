"""A real Usher cluster for tests: a controller process and LNM processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from usher.client import Client
from usher.ctrl.store import Store
from usher.ctrl.tokens import issue_token
from usher.images import catalog
from usher.model import VM, Node, Operation

TESTS_DIR = Path(__file__).parent
LEASE_TTL = 1.0
"""Seconds a fake node's disk leases outlive its LNM in the tests (the driver's default: 10)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` if not."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    return env


class Cluster:
    """Controller + LNMs as separate processes, with the state of each under ``root``."""

    def __init__(
        self,
        root: Path,
        db_url: str | None,
        plugins: list[str] | None = None,
        plugin_tables: dict[str, dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
        storage: Path | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.root = root
        self.db_url = db_url
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.listen = f"{listen_host}:{self.port}"
        self.tls = bool((settings or {}).get("tls"))
        self.url = f"{'https' if self.tls else 'http'}://{self.listen}"
        self.state = root / "ctrl"
        self.ca = self.state / "tls" / "ca.pem"
        self.join_token_file = root / "join.token"
        self.storage = storage or root / "storage"
        self.config = root / "ctrl.toml"
        self._write_config(db_url, plugins, plugin_tables or {}, settings or {})
        self.ctrl: subprocess.Popen[bytes] | None = None
        self.lnms: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self._clients: list[Client] = []

    def _write_config(
        self,
        db_url: str | None,
        plugins: list[str] | None,
        tables: dict[str, dict[str, Any]],
        settings: dict[str, Any],
    ) -> None:
        lines = [
            f'state_dir = "{self.state}"',
            f'storage_dir = "{self.storage}"',
            "node_timeout = 3.0",
            "notify_timeout = 1.0",
        ]
        if "tls" not in settings:  # plain HTTP unless a test asks for TLS (the default)
            lines.append("tls = false")
        if db_url:
            lines.append(f'database_url = "{db_url}"')
        lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
        lines.append("[plugins]")
        enabled = ["tokens", "scheduler", "eventlog", *(plugins or [])]
        lines.append(f"enabled = {json.dumps(enabled)}")
        for name, table in tables.items():
            lines.append(f"[plugins.{json.dumps(name)}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        self.config.write_text("\n".join(lines) + "\n")

    # --- processes ---------------------------------------------------------------------

    def _spawn(
        self, name: str, args: list[str], prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [*prefix, sys.executable, "-m", "usher.cli.usher_cmd", *args],
            stdout=log,
            stderr=log,
            env=_env(),
        )

    def issue_token(self, principal: str, roles: list[str]) -> str:
        """A token for ``principal`` written straight into the controller's database (as an
        admin's tool would), for tests that need several users."""

        async def issue() -> str:
            store = Store(self.db_url or f"sqlite:///{self.state / 'usher.db'}")
            try:
                return await issue_token(store, principal, roles, description="test user")
            finally:
                await store.close()

        return asyncio.run(issue())

    def add_blank_image(self, name: str = "tiny") -> None:
        """Put a blank qcow2 disk image into the catalogue (enough for the fake driver)."""
        blank = self.root / f"{name}-blank.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
        catalog.import_disk(self.storage, name, blank, "blank disk for fake-driver tests")

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """How clients check the controller: its generated CA under TLS."""
        return ssl.create_default_context(cafile=self.ca) if self.tls else True

    def start_ctrl(self) -> None:
        self.ctrl = self._spawn(
            "ctrl", ["ctrl", "--config", str(self.config), "--listen", self.listen]
        )
        token_file = self.state / "admin.token"

        def ready() -> bool:
            if self.ctrl is not None and self.ctrl.poll() is not None:
                raise AssertionError(f"controller exited: {self.log('ctrl')[-3000:]}")
            if not token_file.exists():
                return False
            self.token = token_file.read_text().strip()
            try:
                r = httpx.get(
                    f"{self.url}/v1/whoami",
                    timeout=2,
                    headers={"Authorization": f"Bearer {self.token}"},
                    verify=self.verify,
                )
            except httpx.HTTPError:
                return False
            return r.status_code == 200

        wait_for("the controller to answer", ready, timeout=30)
        if not self.join_token_file.exists():
            self.join_token_file.write_text(self.join_token(uses=10_000) + "\n")

    def join_token(self, *, ttl: float = 86400, uses: int = 1) -> str:
        """A join token from the admin API (what ``usher node token`` prints)."""
        r = self.http("POST", "/v1/nodes/join-tokens", json={"ttl": ttl, "uses": uses})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def kill_ctrl(self) -> None:
        assert self.ctrl is not None
        self.ctrl.send_signal(signal.SIGKILL)
        self.ctrl.wait(10)

    def start_lnm(
        self,
        name: str,
        *,
        vcpus: int = 8,
        memory_mb: int = 8192,
        labels: str | None = None,
        driver_options: dict[str, Any] | None = None,
        wait: bool = True,
        driver: str = "fake",
        netns: str | None = None,
        migration_host: str = "127.0.0.1",
        join_token_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        """Start an LNM process (inside the network namespace of file ``netns`` if given).
        It joins with the cluster's join token (or ``join_token_file``) the first time, then
        with the credential it saved in its state dir; under TLS it verifies the controller
        with the generated CA (or ``ca_file``)."""
        args = [
            "lnm",
            "--ctrl",
            self.url,
            "--name",
            name,
            "--driver",
            driver,
            "--migration-host",
            migration_host,
            "--state-dir",
            str(self.root / "nodes" / name),
            "--storage-dir",
            str(self.storage),
            "--join-token-file",
            str(join_token_file or self.join_token_file),
            "--vcpus",
            str(vcpus),
            "--memory-mb",
            str(memory_mb),
        ]
        if labels:
            args += ["--labels", labels]
        if self.tls or ca_file:
            args += ["--ca-file", str(ca_file or self.ca)]
        if driver == "fake":  # a dead host's disk leases expire soon (host_dies)
            driver_options = {"lease_ttl": LEASE_TTL, **(driver_options or {})}
        for key, value in (driver_options or {}).items():
            args += ["--driver-option", f"{key}={json.dumps(value)}"]
        # nsenter joins only the network namespace (``ip netns exec`` also remounts /sys
        # and /, which a chroot does not allow); ``netns`` is a namespace file's path
        prefix = ("nsenter", f"--net={netns}", "--") if netns else ()
        self.lnms[name] = self._spawn(name, args, prefix)
        if wait:
            self.wait_node(name, connected=True)

    def guest_pid(self, node: str, vm_id: str) -> int | None:
        """The pid of the QEMU running ``vm_id`` on ``node`` (None if there is none)."""
        pidfile = self.root / "nodes" / node / "qemu" / "vms" / vm_id / "qemu.pid"
        try:
            pid = int(pidfile.read_text())
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError):
            return None
        return None if state in ("Z", "X") else pid

    def kill_lnm(self, name: str) -> None:
        proc = self.lnms.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def host_dies(self, name: str) -> None:
        """kill -9 node ``name``'s LNM and stay away until its disk leases expired: to the
        shared storage its host died, and another node may take its guests' disks (while
        they hold, a start elsewhere is refused: its guests may still run)."""
        self.kill_lnm(name)
        time.sleep(LEASE_TTL + 0.5)

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        for proc in [*self.lnms.values(), self.ctrl]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.lnms.values(), self.ctrl]:
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- talking to it -----------------------------------------------------------------

    def client(self, token: str | None = None) -> Client:
        transport = httpx.HTTPTransport(verify=self.verify) if self.tls else None
        client = Client(self.url, token or self.token, timeout=60, transport=transport)
        self._clients.append(client)
        return client

    def http(
        self, method: str, path: str, *, token: str | None = "admin", **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'admin' else token}"
        return httpx.request(
            method, self.url + path, headers=headers, timeout=30, verify=self.verify, **kwargs
        )

    def ush(
        self,
        *args: str,
        timeout: float = 60,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``ush`` as a user of this cluster would (``env``: more of the environment;
        ``input``: its stdin, none if None)."""
        extra, env = env or {}, _env()
        env.update(
            USHER_URL=self.url,
            USHER_TOKEN=self.token,
            USHER_HOME=str(self.root / "home"),
            COLUMNS="200",
        )
        if self.tls:
            env["USHER_CA_FILE"] = str(self.ca)
        env.update(extra)
        return subprocess.run(
            [sys.executable, "-m", "usher.cli.ush", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **({"input": input} if input is not None else {"stdin": subprocess.DEVNULL}),
        )

    def node(self, name: str) -> Node:
        return self.client().node(name)

    def wait_node(self, name: str, *, connected: bool, timeout: float = 20) -> Node:
        client = self.client()

        def check() -> Node | None:
            try:
                node = client.node(name)
            except Exception:
                return None
            return node if node.connected == connected else None

        return wait_for(f"node {name} connected={connected}", check, timeout)

    def vms(self, **filters: Any) -> list[VM]:
        return list(self.client().iter_vms(**filters))

    def run(self, op: Operation, timeout: float = 60) -> Operation:
        """Wait for ``op`` and return it finished."""
        done = self.client().wait(op, timeout=timeout)
        assert done.done, f"operation {op.id} still {done.status} after {timeout} s"
        return done
