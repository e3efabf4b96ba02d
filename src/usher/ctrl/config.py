"""The controller's settings: a TOML file, overridden by command-line flags."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from usher.bounds import MAX_BODY_BYTES
from usher.model import Capacity

DEFAULT_PORT = 8760
DEFAULT_PLUGINS = ["tokens", "keys", "scheduler", "eventlog"]
ADMIN_TOKEN_FILE = "admin.token"  # in the state dir: the first admin token, mode 0600


DEFAULT_OP_TIMEOUTS = {
    "start": 300.0,
    "stop": 120.0,
    "destroy": 120.0,
    "pause": 60.0,
    "resume": 60.0,
    "reboot": 120.0,
    "cycle": 300.0,
    "migrate": 600.0,
}


class PluginSettings(BaseModel):
    """``[plugins]``: which plugins run, in order; each may have its own table."""

    model_config = ConfigDict(extra="allow")

    enabled: list[str] = Field(default_factory=lambda: list(DEFAULT_PLUGINS))

    def table(self, name: str) -> dict[str, Any]:
        extra = self.model_extra or {}
        value = extra.get(name, {})
        return dict(value) if isinstance(value, dict) else {}


DEFAULT_STATE_DIR = Path("/var/lib/usher")
"""Where a controller keeps its state unless told otherwise."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    tls: bool = Field(
        True,
        description="serve the API and the LNM link over TLS (a CA and certificate are made "
        "at first start unless tls_cert/tls_key name the site's own)",
    )
    tls_cert: Path | None = Field(None, description="the site's server certificate (PEM)")
    tls_key: Path | None = Field(None, description="the key of tls_cert (PEM)")
    tls_ca: Path | None = Field(None, description="the CA that signed tls_cert, for clients")
    tls_names: list[str] = Field(
        default_factory=list, description="more DNS names or addresses for the generated cert"
    )
    state_dir: Path = DEFAULT_STATE_DIR
    database_url: str | None = None
    storage_dir: Path = Field(
        Path("/var/lib/usher/storage"),
        description="shared storage (images, VM disks) that every LNM of the cluster also sees",
    )
    node_timeout: float = Field(3.0, gt=0, description="seconds without heartbeat: node down")
    notify_timeout: float = Field(5.0, gt=0, description="seconds a notification hook may take")
    hook_timeout: float = Field(
        10.0, gt=0, description="seconds a decision or request hook may take: then it failed"
    )
    command_timeout: float = Field(300.0, gt=0, description="seconds an LNM command may take")
    migrate_timeout: float = Field(120.0, gt=0)
    op_timeouts: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_OP_TIMEOUTS),
        description="seconds one VM's step of an operation may take, by kind; a request's "
        "`timeout` kwarg may only shorten it",
    )
    max_parallel: int = Field(1024, ge=1, description="VM steps run at once")
    networks: dict[str, str] = Field(
        default_factory=lambda: {"default": "default"},
        description="the networks users may put a new VM on with the `network` kwarg: name -> "
        "what the driver gets (`default`, `user`, or `bridge:<linux bridge>`)",
    )
    max_body_bytes: int = Field(
        MAX_BODY_BYTES, ge=1024, description="largest JSON request body the API reads (413)"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(none by default: the client address is the connection's)",
    )
    max_node_capacity: Capacity = Field(
        default_factory=lambda: Capacity(vcpus=1024, memory_mb=16 << 20, disk_gb=1 << 20),
        description="the most a node may claim (more is cut to this, with a node_capacity "
        "event); a join token may set a lower limit for the nodes that join with it",
    )
    rejoin_grace: float = Field(
        30.0,
        gt=0,
        description="seconds after a controller start within which a node that was up must "
        "dial again; then it is declared lost like a node that went silent",
    )
    link_admissions: int = Field(
        128,
        ge=1,
        le=10_000,
        description="LNM links admitted at a time (handshake to reconciled); a few more wait "
        "their turn and any other is told to come back later (503, Retry-After), so that "
        "all nodes dialling at once after a restart come back in waves",
    )
    link_wait: float = Field(
        3.0,
        gt=0,
        le=60,
        description="seconds of admissions (at the rate links are being admitted) that may "
        "wait their turn before the upgrade; beyond that an LNM is told to come back later",
    )
    login_failures: int = Field(
        10, ge=1, description="failed logins per minute allowed per user name and per address"
    )
    plugins: PluginSettings = Field(default_factory=PluginSettings)

    def op_timeout(self, kind: str) -> float:
        """The step limit of ``kind`` (the defaults fill in kinds the config leaves out)."""
        return float(self.op_timeouts.get(kind, DEFAULT_OP_TIMEOUTS.get(kind, 300.0)))

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'usher.db'}"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML config at ``path`` (if any), then apply non-None ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Settings.model_validate(data)
