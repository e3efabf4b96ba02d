"""Where the controller is and which token to show it: named remotes.

Each setting comes from the first place that has it: explicit arguments, the environment
(``USHER_URL``, ``USHER_TOKEN``, ``USHER_CA_FILE``), then the remote in use in
``$USHER_HOME/config.toml`` (``~/.usher`` by default). The file names several controllers
(*remotes*), each with ``url``, ``token`` and ``ca_file`` (the CA certificate that signed
the controller's TLS certificate; without it the system's CAs are trusted), and which one is
in use (``--remote NAME`` or ``USHER_REMOTE`` picks another for one command)::

    remote = "local"

    [remotes.local]
    url = "https://127.0.0.1:8760"
    token = "…"
    ca_file = "/root/.usher/local/ctrl/tls/ca.pem"

A file from before remotes (``url``, ``token`` and ``ca_file`` at the top) reads as one
remote, ``default``, and is rewritten in this form when next saved. The URL defaults to
:data:`DEFAULT_URL`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from usher.client.errors import UsherError

DEFAULT_URL = "https://127.0.0.1:8760"
KEYS = ("url", "token", "ca_file")
DEFAULT_REMOTE = "default"
REMOTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class Settings:
    url: str
    token: str | None
    ca_file: str | None = None


@dataclass
class ConfigFile:
    """``config.toml``: the remotes it names and the one in use."""

    current: str | None = None
    remotes: dict[str, dict[str, str]] = field(default_factory=dict)


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
    remote: str | None = None,
) -> Settings:
    """Settle the controller URL, token and CA file; the config file is read only if needed.

    A remote named (``remote``, else ``USHER_REMOTE``) gives all three, as a set (only
    ``url``/``token``/``ca_file`` passed here override it). Otherwise each comes from the
    arguments, the environment, then the remote in use, whose token and CA are taken only
    for that remote's own URL: a saved token is never sent to another controller."""
    env = os.environ if env is None else env
    named = remote or env.get("USHER_REMOTE")
    if named:
        chosen = _remote_settings(env, named)
        url = _normalise_url(url or chosen.get("url") or DEFAULT_URL)
        token = token or chosen.get("token") or None
        ca_file = ca_file or chosen.get("ca_file") or None
        return Settings(url=url, token=token, ca_file=ca_file if url.startswith("https:") else None)
    in_use = cache(lambda: _remote_settings(env, None))
    url = _normalise_url(url or env.get("USHER_URL") or in_use().get("url") or DEFAULT_URL)
    # the remote's token and CA go to its own URL only (a remote without one takes any)
    own = cache(lambda: "url" not in in_use() or _normalise_url(in_use()["url"]) == url)
    token = token or env.get("USHER_TOKEN") or (own() and in_use().get("token")) or None
    if url.startswith("https:"):  # plain HTTP needs no CA
        ca_file = ca_file or env.get("USHER_CA_FILE") or (own() and in_use().get("ca_file")) or None
    else:
        ca_file = None
    return Settings(url=url, token=token, ca_file=ca_file)


def _remote_settings(env: Mapping[str, str], name: str | None) -> dict[str, str]:
    config = read_config(env)
    if name is None:
        return config.remotes.get(config.current or "", {})
    _known(config, name, env)
    return config.remotes[name]


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"https://{url}"  # TLS is the controller's default


def _path(env: Mapping[str, str] | None) -> Path:
    return usher_home(env) / "config.toml"


def read_config(env: Mapping[str, str] | None = None) -> ConfigFile:
    """The remotes in ``$USHER_HOME/config.toml`` (none if there is no file)."""
    path = _path(env)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return ConfigFile()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsherError(None, f"cannot read {path}: {exc}") from exc
    remotes = data.get("remotes", {})
    if not isinstance(remotes, dict) or not all(isinstance(r, dict) for r in remotes.values()):
        raise UsherError(None, f"{path}: 'remotes' must hold one table per remote")
    config = ConfigFile(
        current=data.get("remote"),
        remotes={name: _settings(path, table) for name, table in remotes.items()},
    )
    if config.current is not None and not isinstance(config.current, str):
        raise UsherError(None, f"{path}: 'remote' must be a string")
    if any(key in data for key in KEYS):  # a file from before remotes
        config.remotes.setdefault(DEFAULT_REMOTE, _settings(path, data))
        config.current = config.current or DEFAULT_REMOTE
    return config


def _settings(path: Path, table: Mapping[str, Any]) -> dict[str, str]:
    for key in KEYS:
        if key in table and not isinstance(table[key], str):
            raise UsherError(None, f"{path}: '{key}' must be a string")
    return {key: table[key] for key in KEYS if key in table}


def write_config(config: ConfigFile, env: Mapping[str, str] | None = None) -> Path:
    """Write ``config`` to ``$USHER_HOME/config.toml``, readable by its owner only: written
    whole to a private file beside it, then moved over it."""
    path = _path(env)
    lines = [f"remote = {_toml_string(config.current)}"] if config.current else []
    for name, settings in sorted(config.remotes.items()):
        lines += ["", f"[remotes.{_toml_string(name)}]"]
        lines += [f"{key} = {_toml_string(settings[key])}" for key in KEYS if settings.get(key)]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (any Unicode as itself; quotes, backslashes and
    control characters escaped)."""
    out = []
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def saved(env: Mapping[str, str] | None = None, remote: str | None = None) -> dict[str, str]:
    """The settings of remote ``remote`` (default: the one in use; {} if there is none)."""
    config = read_config(env)
    return dict(config.remotes.get(remote or config.current or "", {}))


def save(
    changes: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
    remote: str | None = None,
) -> Path:
    """Update remote ``remote`` (default: the one in use, or ``default`` if none is) with
    ``changes`` (None removes a key), keeping its other settings and the other remotes; a
    remote that did not exist yet becomes the one in use. Returns the file's path."""
    config = read_config(env)
    name = remote or config.current or DEFAULT_REMOTE
    values = {**config.remotes.get(name, {}), **changes}
    config.remotes[name] = {k: v for k, v in values.items() if v}
    config.current = config.current or name
    return write_config(config, env)


def remote_for(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The remote whose URL is ``url``: the one in use if it is, else the first by name."""
    config = read_config(env)
    url = _normalise_url(url)
    matches = [n for n, s in config.remotes.items() if _normalise_url(s.get("url", "")) == url]
    if config.current in matches:
        return config.current
    return min(matches) if matches else None


def add_remote(
    name: str,
    settings: Mapping[str, str | None],
    env: Mapping[str, str] | None = None,
    *,
    use: bool = False,
) -> Path:
    """Add (or replace) remote ``name``; ``use``: make it the one in use (as is the first)."""
    if not REMOTE_NAME.fullmatch(name):
        raise UsherError(
            None, f"remote names are letters, digits, '.', '_' and '-' (at most 63): {name!r}"
        )
    config = read_config(env)
    config.remotes[name] = {k: v for k, v in settings.items() if k in KEYS and v}
    if use or config.current is None:
        config.current = name
    return write_config(config, env)


def use_remote(name: str, env: Mapping[str, str] | None = None) -> Path:
    config = read_config(env)
    _known(config, name, env)
    config.current = name
    return write_config(config, env)


def remove_remote(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Forget remote ``name``; if it was in use, none is (until ``ush remote use``)."""
    config = read_config(env)
    _known(config, name, env)
    del config.remotes[name]
    if config.current == name:
        config.current = None
    return write_config(config, env)


def _known(config: ConfigFile, name: str, env: Mapping[str, str] | None) -> None:
    """Refuse a remote ``config`` does not name, saying which it does."""
    if name not in config.remotes:
        known = ", ".join(sorted(config.remotes)) or "none yet: `ush remote add NAME URL`"
        raise UsherError(None, f"no remote {name!r} in {_path(env)}; remotes: {known}")
