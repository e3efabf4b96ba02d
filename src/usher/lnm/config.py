"""What an LNM is told at start: the controller to dial, its name, credential and capacity."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIAL_FILE = "node.credential"  # in the LNM's state dir, mode 0600


@dataclass
class LNMConfig:
    ctrl_url: str
    name: str
    credential_file: Path
    vcpus: int
    memory_mb: int
    labels: dict[str, str] = field(default_factory=dict)
    migration_host: str = "127.0.0.1"
    backoff_max: float = 10.0
    join_token: str | None = None
    ca_file: str | None = None

    def secret(self) -> str | None:
        """This node's credential once it has one, else the join token."""
        if self.credential_file.exists():
            return self.credential_file.read_text().strip()
        return self.join_token

    def save_credential(self, credential: str) -> None:
        fd = os.open(self.credential_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(credential + "\n")


def ws_url(ctrl_url: str) -> str:
    """``http://host:port`` → ``ws://host:port/v1/lnm`` (and https → wss)."""
    base = ctrl_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base.removeprefix("https://")
    elif base.startswith("http://"):
        base = "ws://" + base.removeprefix("http://")
    return base + "/v1/lnm"
