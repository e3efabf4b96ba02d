"""The cluster ``usher local`` runs on this machine: where the admin tools look when they are
not told (``usher node token``, ``usher image …``, ``usher admin-token``) and the site's
default directories do not hold a controller."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from usher.client.config import usher_home

PIDFILE = "local.pid"
URL_FILE = "url"
CA_FILE = "ca_file"


@dataclass(frozen=True)
class LocalCluster:
    state: Path
    url: str

    @property
    def ctrl_state(self) -> Path:
        return self.state / "ctrl"

    @property
    def storage(self) -> Path:
        return self.state / "storage"

    @property
    def listen(self) -> str:
        return urlsplit(self.url).netloc


def default_state() -> Path:
    """Where ``usher local`` keeps a cluster: ``$USHER_HOME/local`` (``~/.usher/local``)."""
    return usher_home() / "local"


def running_local(state: Path | None = None) -> LocalCluster | None:
    """The local cluster in ``state`` (default: :func:`default_state`), if it runs."""
    state = state or default_state()
    try:
        pid = int((state / PIDFILE).read_text())
        url = (state / URL_FILE).read_text().strip()
        status = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    if status.rsplit(")", 1)[-1].split()[0] == "Z":  # ended, not yet reaped
        return None
    return LocalCluster(state, url)
