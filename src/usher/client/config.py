"""Where the controller is and which token to show it.

Each setting comes from the first place that has it: explicit arguments, the environment
(``USHER_URL``, ``USHER_TOKEN``), then ``$USHER_HOME/config.toml`` (``~/.usher`` by default)
with keys ``url`` and ``token``. The URL defaults to :data:`DEFAULT_URL`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from usher.client.errors import UsherError

DEFAULT_URL = "http://127.0.0.1:8760"


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None


def usher_home(env: Mapping[str, str] | None = None) -> Path:
    """The per-user directory holding ``config.toml`` and the shell history."""
    env = os.environ if env is None else env
    home = env.get("USHER_HOME")
    return Path(home) if home else Path.home() / ".usher"


def resolve(
    url: str | None = None, token: str | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Settle the controller URL and token; the config file is read only if needed."""
    env = os.environ if env is None else env
    path = usher_home(env) / "config.toml"
    from_file = cache(lambda: _read_config(path))
    url = url or env.get("USHER_URL") or from_file().get("url") or DEFAULT_URL
    token = token or env.get("USHER_TOKEN") or from_file().get("token") or None
    return Settings(url=_normalise_url(url), token=token)


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _read_config(path: Path) -> dict[str, str]:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsherError(None, f"cannot read {path}: {exc}") from exc
    for key in ("url", "token"):
        if key in data and not isinstance(data[key], str):
            raise UsherError(None, f"{path}: '{key}' must be a string")
    return {key: data[key] for key in ("url", "token") if key in data}
