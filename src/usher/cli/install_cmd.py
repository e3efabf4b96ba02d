"""``usher install ctrl|lnm``: set this host up to run a daemon under systemd.

Each writes the daemon's config (kept if it exists, unless ``--force``), its systemd unit
(always: an upgrade brings the new one) and the service user, then says what to run next.
Nothing is started: ``systemctl enable --now usher-ctrl`` (or ``usher-lnm``) does that.
``docs/deploy.md`` walks a whole site through it.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import ssl
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import click

from usher.bounds import NAME_RE
from usher.cli.ush_options import parse_kwargs
from usher.install.configs import ctrl_config, lnm_config
from usher.install.host import (
    InstallError,
    daemon_reload,
    ensure_dir,
    ensure_user,
    existing_groups,
    own_dir,
    read_small,
    systemd_running,
    write_file,
)
from usher.install.units import UNIT_DIR, Role, render, unit_name

CONFIG_DIR = Path("/etc/usher")
DEFAULT_STORAGE = Path("/var/lib/usher/storage")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
"""A DNS name or an IPv4/IPv6 address, as a certificate's subject names take them."""
UNIT_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")
"""A path a unit file takes as it is: absolute, without spaces (a list separator there), ``%``
(a specifier), quotes or control characters."""
LNM_GROUPS = ["kvm", "libvirt"]
"""Groups the LNM's user joins where the host has them: /dev/kvm, libvirtd's socket."""


def _usher_executable() -> Path:
    """The ``usher`` script of the environment this command runs from (a venv's own)."""
    found = Path(sys.prefix) / "bin" / "usher"
    if not found.exists():
        which = shutil.which("usher")
        if which is None:
            raise InstallError("cannot find the usher executable to put in the unit")
        found = Path(which)
    if not UNIT_PATH.fullmatch(str(found)):
        raise InstallError(f"the usher executable's path {str(found)!r} cannot go in a unit")
    return found


def _unit_path(path: Path) -> Path:
    """``--storage-dir`` as the units take it (``RequiresMountsFor``, ``ReadWritePaths``)."""
    text = str(path)
    if not UNIT_PATH.fullmatch(text) or os.path.normpath(text) != text:
        raise click.BadParameter(
            f"{text!r} is not an absolute path of letters, digits and ._+-/",
            param_hint="--storage-dir",
        )
    return path


def _kept_storage(config: Path) -> Path:
    """The storage dir of an existing config that is kept: the unit must let the daemon
    write where its config points, whatever ``--storage-dir`` says this time."""
    try:
        data = tomllib.loads(read_small(config, 1 << 20))
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"cannot read the kept {config}: {exc} (--force replaces it)") from exc
    value = data.get("storage_dir", str(DEFAULT_STORAGE))
    if not isinstance(value, str) or not UNIT_PATH.fullmatch(value):
        raise InstallError(f"{config}: storage_dir {value!r} cannot go in a unit")
    return Path(value)


def _storage(config: Path, given: Path, force: bool) -> Path:
    """The storage dir the unit names: the kept config's, else the one given."""
    if force or not config.exists():
        return given
    kept = _kept_storage(config)
    if kept != given:
        click.echo(f"the unit names storage {kept}, as the kept {config} does")
    return kept


def _common(fn: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--user", default="usher", show_default=True, help="The service user."),
        click.option(
            "--uid",
            type=click.IntRange(min=1),
            help="Its uid, made or checked (one uid on every host that shares the storage).",
        ),
        click.option(
            "--storage-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_STORAGE,
            show_default=True,
            help="The shared storage (an NFSv4 mount on every host), same path everywhere.",
        ),
        click.option("--force", is_flag=True, help="Replace an existing config file too."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _finish(role: Role, user: pwd.struct_passwd, storage: Path, groups: list[str]) -> None:
    unit = render(
        role,
        usher=_usher_executable(),
        user=user.pw_name,
        storage=storage,
        config_dir=CONFIG_DIR,
        groups=groups,
    )
    write_file(UNIT_DIR / unit_name(role), unit)
    click.echo(f"wrote {UNIT_DIR / unit_name(role)}")
    daemon_reload()
    start = f"systemctl enable --now {unit_name(role)}"
    if systemd_running():
        click.echo(f"next: {start}")
    else:
        click.echo(f"systemd does not run here; once it does: {start}")


def _config(path: Path, text: str, force: bool, *, owner: pwd.struct_passwd) -> None:
    if write_file(path, text, mode=0o640, owner=owner, replace=force):
        click.echo(f"wrote {path}")
    else:
        click.echo(f"kept {path} (--force replaces it)")


@click.group()
def install() -> None:
    """Set this host up to run Usher's controller or an LNM under systemd (as root)."""


@install.command("ctrl")
@_common
@click.option("--listen", default="0.0.0.0:8760", show_default=True, help="HOST:PORT to serve.")
@click.option(
    "--name",
    "names",
    multiple=True,
    help="A DNS name or address LNMs and users reach the controller by (repeat; default: this "
    "host's FQDN); it goes into the generated TLS certificate.",
)
@click.option(
    "--database-url",
    help="PostgreSQL, e.g. 'postgresql:///usher?host=/run/postgresql' (default: SQLite).",
)
def install_ctrl(
    user: str,
    uid: int | None,
    storage_dir: Path,
    force: bool,
    listen: str,
    names: tuple[str, ...],
    database_url: str | None,
) -> None:
    """Install the controller: user, /etc/usher/ctrl.toml, usher-ctrl.service."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{listen!r} is not HOST:PORT", param_hint="--listen")
    for name in names:
        if not HOST_NAME.fullmatch(name):
            raise click.BadParameter(f"{name!r} is not a host name or address", param_hint="--name")
    _unit_path(storage_dir)
    try:
        storage_dir = _storage(CONFIG_DIR / "ctrl.toml", storage_dir, force)
        owner = ensure_user(user, Path("/var/lib/usher"), uid)
        own_dir(Path("/var/lib/usher"), owner, 0o700)
        ensure_dir(storage_dir, owner, 0o750)
        text = ctrl_config(
            listen=listen,
            names=list(names) or [socket.getfqdn()],
            storage=storage_dir,
            database_url=database_url,
        )
        _config(CONFIG_DIR / "ctrl.toml", text, force, owner=owner)
        _finish("ctrl", owner, storage_dir, [])
    except (InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _ctrl_url(url: str) -> tuple[str, int]:
    """``--ctrl`` checked (``https://HOST[:PORT]``, no user, path, query or fragment): its
    host and port."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 0
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or not HOST_NAME.fullmatch(parts.hostname)
        or "@" in parts.netloc
        or not 0 < port < 65536
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or not url.isprintable()
    ):
        raise click.BadParameter(f"{url!r}: expected https://HOST:PORT", param_hint="--ctrl")
    return parts.hostname, port


def _route_address(host: str, port: int) -> str:
    """This host's address on the way to the controller at ``host``: where the other nodes
    reach this one for live migrations (no packet is sent)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = found[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise InstallError(f"cannot find a route to {host}: {exc}") from exc


@install.command("lnm")
@_common
@click.option(
    "--ctrl",
    "ctrl_url",
    help="The controller, https://HOST:8760 (needed unless lnm.toml is there and kept).",
)
@click.option(
    "--join-token-file",
    type=click.Path(path_type=Path),
    help="A join token from `usher node token` on the controller's host (needed unless "
    "lnm.toml is there and kept).",
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path),
    help="The controller's CA (its /var/lib/usher/tls/ca.pem; default: the system's CAs).",
)
@click.option("--name", help="This node's name (default: the host name).")
@click.option("--driver", default="qemu", show_default=True, help="qemu, libvirt, …")
@click.option(
    "--migration-host",
    help="Address incoming live migrations listen on (default: this host's address on the "
    "route to the controller).",
)
@click.option(
    "--driver-option", "driver_options", multiple=True, metavar="KEY=JSON", callback=parse_kwargs
)
@click.option("--vcpus", type=click.IntRange(min=1), help="vCPUs to offer (default: host's).")
@click.option("--memory-mb", type=click.IntRange(min=1), help="Memory to offer (default: host's).")
def install_lnm(
    user: str,
    uid: int | None,
    storage_dir: Path,
    force: bool,
    ctrl_url: str | None,
    join_token_file: Path | None,
    ca_file: Path | None,
    name: str | None,
    driver: str,
    migration_host: str | None,
    driver_options: dict[str, object],
    vcpus: int | None,
    memory_mb: int | None,
) -> None:
    """Install an LNM: user, /etc/usher/lnm.toml, the join token, usher-lnm.service."""
    name = name or socket.gethostname().split(".")[0]
    if not NAME_RE.fullmatch(name):
        raise click.BadParameter(f"{name!r} is not a node name", param_hint="--name")
    if not NAME_RE.fullmatch(driver):
        raise click.BadParameter(f"{driver!r} is not a driver name", param_hint="--driver")
    if migration_host is not None and not HOST_NAME.fullmatch(migration_host):
        raise click.BadParameter(
            f"{migration_host!r} is not a host name or address", param_hint="--migration-host"
        )
    ctrl = None if ctrl_url is None else _ctrl_url(ctrl_url)
    _unit_path(storage_dir)
    config = CONFIG_DIR / "lnm.toml"
    new_config = force or not config.exists()
    if new_config and (ctrl_url is None or join_token_file is None):
        raise click.UsageError(f"a new {config} needs --ctrl and --join-token-file")
    try:
        token = None if join_token_file is None else _token(join_token_file)
        ca_text = None if ca_file is None else _ca(ca_file)
        storage_dir = _storage(config, storage_dir, force)
        if new_config and ctrl is not None:
            migration_host = migration_host or _route_address(*ctrl)
        owner = ensure_user(user, Path("/var/lib/usher-lnm"), uid)
        ensure_dir(storage_dir, owner, 0o750)
        token_file = CONFIG_DIR / "join.token"
        if token is not None:
            write_file(token_file, token + "\n", mode=0o600, owner=owner)
            click.echo(f"wrote {token_file}")
        ca_copy = None
        if ca_text is not None:
            ca_copy = CONFIG_DIR / "ctrl-ca.pem"
            write_file(ca_copy, ca_text)
            click.echo(f"wrote {ca_copy}")
        if new_config and ctrl_url is not None and migration_host is not None:
            text = lnm_config(
                ctrl=ctrl_url,
                name=name,
                driver=driver,
                storage=storage_dir,
                join_token_file=token_file,
                ca_file=ca_copy,
                migration_host=migration_host,
                driver_options=driver_options,
                vcpus=vcpus,
                memory_mb=memory_mb,
            )
            _config(config, text, True, owner=owner)
        else:
            click.echo(f"kept {config} (--force replaces it)")
        _finish("lnm", owner, storage_dir, existing_groups(LNM_GROUPS))
    except (InstallError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _token(path: Path) -> str:
    token = read_small(path, 4096).strip()
    if not token or not token.isprintable():
        raise InstallError(f"{path} does not hold a join token")
    return token


def _ca(path: Path) -> str:
    """The text of the controller's CA file, checked to hold PEM certificates."""
    text = read_small(path, 1 << 20)
    try:
        ssl.create_default_context(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise InstallError(f"{path} holds no PEM certificate: {exc}") from exc
    return text
