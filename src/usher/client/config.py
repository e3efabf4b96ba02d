"""Where the controller is and which token to show it.

Each setting comes from the first place that has it: explicit arguments, the environment
(``USHER_URL``, ``USHER_TOKEN``, ``USHER_CA_FILE``), then ``$USHER_HOME/config.toml``
(``~/.usher`` by default) with keys ``url``, ``token`` and ``ca_file`` (the CA certificate
that signed the controller's TLS certificate; without it the system's CAs are trusted). The
URL defaults to :data:`DEFAULT_URL`.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from usher.client.errors import UsherError

DEFAULT_URL = "https://127.0.0.1:8760"
KEYS = ("url", "token", "ca_file")


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    ca_file: str | None = None


def usher_home(env: Mapping[str, str] | None = None) -> Path:
    """The per-user directory holding ``config.toml`` and the shell history."""
    env = os.environ if env is None else env
    home = env.get("USHER_HOME")
    return Path(home) if home else Path.home() / ".usher"


def resolve(
    url: str | None = None,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    ca_file: str | None = None,
) -> Settings:
    """Settle the controller URL, token and CA file; the config file is read only if needed."""
    env = os.environ if env is None else env
    path = usher_home(env) / "config.toml"
    from_file = cache(lambda: _read_config(path))
    url = url or env.get("USHER_URL") or from_file().get("url") or DEFAULT_URL
    token = token or env.get("USHER_TOKEN") or from_file().get("token") or None
    url = _normalise_url(url)
    if url.startswith("https:"):  # plain HTTP needs no CA
        ca_file = ca_file or env.get("USHER_CA_FILE") or from_file().get("ca_file") or None
    return Settings(url=url, token=token, ca_file=ca_file)


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"https://{url}"  # TLS is the controller's default


def _read_config(path: Path) -> dict[str, str]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsherError(None, f"cannot read {path}: {exc}") from exc
    for key in KEYS:
        if key in data and not isinstance(data[key], str):
            raise UsherError(None, f"{path}: '{key}' must be a string")
    return {key: data[key] for key in KEYS if key in data}


def saved(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings in ``$USHER_HOME/config.toml`` ({} if there is none)."""
    return _read_config(usher_home(env) / "config.toml")


def save(changes: Mapping[str, str | None], env: Mapping[str, str] | None = None) -> Path:
    """Update ``$USHER_HOME/config.toml`` with ``changes`` (None removes a key), keeping the
    other settings; the file is readable by its owner only. Returns its path."""
    path = usher_home(env) / "config.toml"
    values = {**saved(env), **changes}
    lines = [f"{key} = {json.dumps(values[key])}" for key in KEYS if values.get(key)]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path
