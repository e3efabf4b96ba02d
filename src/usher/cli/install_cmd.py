"""``usher install ctrl|lnm``: set this host up to run a daemon under systemd.

Each writes the daemon's config (kept if it exists, unless ``--force``), its systemd unit
(always: an upgrade brings the new one) and the service user, then says what to run next.
Nothing is started: ``systemctl enable --now usher-ctrl`` (or ``usher-lnm``) does that.
``docs/deploy.md`` walks a whole site through it.
"""

from __future__ import annotations

import pwd
import re
import shutil
import socket
import sys
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
    systemd_running,
    write_file,
)
from usher.install.units import UNIT_DIR, Role, render, unit_name

CONFIG_DIR = Path("/etc/usher")
DEFAULT_STORAGE = Path("/var/lib/usher/storage")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
"""A DNS name or an IPv4/IPv6 address, as a certificate's subject names take them."""
LNM_GROUPS = ["kvm", "libvirt"]
"""Groups the LNM's user joins where the host has them: /dev/kvm, libvirtd's socket."""


def _usher_executable() -> Path:
    """The ``usher`` script of the environment this command runs from (a venv's own)."""
    found = Path(sys.prefix) / "bin" / "usher"
    if found.exists():
        return found
    which = shutil.which("usher")
    if which is None:
        raise InstallError("cannot find the usher executable to put in the unit")
    return Path(which)


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
    try:
        owner = ensure_user(user, Path("/var/lib/usher"), uid)
        ensure_dir(Path("/var/lib/usher"), owner, 0o700)
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


def _route_address(url: str) -> str:
    """This host's address on the way to the controller at ``url``: where the other nodes
    reach this one for live migrations (no packet is sent)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InstallError(f"--ctrl {url!r}: expected https://HOST:PORT")
    port = parts.port or 443
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = found[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except OSError as exc:
        raise InstallError(f"cannot find a route to {parts.hostname}: {exc}") from exc


@install.command("lnm")
@_common
@click.option("--ctrl", "ctrl_url", required=True, help="The controller, https://HOST:8760.")
@click.option(
    "--join-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A join token from `usher node token` on the controller's host.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
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
    ctrl_url: str,
    join_token_file: Path,
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
    try:
        token = join_token_file.read_text().strip()
        if not token or len(token) > 4096 or not token.isprintable():
            raise InstallError(f"{join_token_file} does not hold a join token")
        migration_host = migration_host or _route_address(ctrl_url)
        owner = ensure_user(user, Path("/var/lib/usher-lnm"), uid)
        ensure_dir(storage_dir, owner, 0o750)
        token_file = CONFIG_DIR / "join.token"
        write_file(token_file, token + "\n", mode=0o600, owner=owner)
        click.echo(f"wrote {token_file}")
        ca_copy = None
        if ca_file is not None:
            ca_copy = CONFIG_DIR / "ctrl-ca.pem"
            write_file(ca_copy, ca_file.read_text())
            click.echo(f"wrote {ca_copy}")
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
        _config(CONFIG_DIR / "lnm.toml", text, force, owner=owner)
        _finish("lnm", owner, storage_dir, existing_groups(LNM_GROUPS))
    except (InstallError, OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(str(exc)) from exc
