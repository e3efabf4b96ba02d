"""``usher``: run Usher's daemons — the controller, an LNM, or both on one machine."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click

from usher import gctune, logsafe
from usher.bounds import MAX_LINK_MESSAGE
from usher.cli.admin_cmd import admin_token
from usher.cli.backup_cmd import backup, restore
from usher.cli.image_cmd import image
from usher.cli.install_cmd import install
from usher.cli.lnm_config import load_defaults
from usher.cli.local import local
from usher.cli.node_cmd import node
from usher.cli.ush_options import parse_kwargs
from usher.ctrl.config import DEFAULT_PORT, load_settings
from usher.lnm.agent import CREDENTIAL_FILE


def _daemon(verbose: bool) -> None:
    """What both daemons do first: files they make are their owner's alone (the database,
    its WAL, the audit log, VM disks hold what users and the site must keep to themselves),
    and logging that never writes a secret (:mod:`usher.logsafe`)."""
    os.umask(0o077)
    logsafe.setup(verbose)


@click.group()
@click.version_option(package_name="usher")
def main() -> None:
    """Usher: a virtual-machine cluster manager whose policy lives in plugins."""


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="TOML config file.",
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where state is kept.")
@click.option("--listen", help=f"HOST:PORT to serve on (default 127.0.0.1:{DEFAULT_PORT}).")
@click.option(
    "--storage-dir",
    type=click.Path(file_okay=False),
    help="Shared storage of images and VM disks (default /var/lib/usher/storage).",
)
@click.option("-v", "--verbose", is_flag=True)
def ctrl(
    config_file: str | None,
    state_dir: str | None,
    listen: str | None,
    storage_dir: str | None,
    verbose: bool,
) -> None:
    """Run the controller: REST API, operation engine, plugins, state store."""
    import uvicorn

    from usher.ctrl.app import create_app

    _daemon(verbose)
    try:
        settings = load_settings(
            config_file, state_dir=state_dir, listen=listen, storage_dir=storage_dir
        )
    except Exception as exc:
        raise click.ClickException(f"bad controller config: {exc}") from exc
    host, port = settings.host_port
    tls = None
    if settings.tls:
        from usher.ctrl.tls import server_files

        try:
            tls = server_files(settings)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot set up TLS: {exc}") from exc
    gctune.tune()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        log_level="warning",
        ws_max_size=MAX_LINK_MESSAGE,
        # X-Forwarded-For and -Proto only from the reverse proxies the site names
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
        # the only WebSockets are LNM links, whose heartbeats tell a node gone: no keepalive
        # pings of the controller's own (with 1,000 nodes, 50 a second)
        ws_ping_interval=None,
        timeout_graceful_shutdown=5,
    )


def _parse_labels(value: str | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (value or "").split(",")):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"label {item!r} is not key=value", param_hint="--labels")
        labels[key.strip()] = val.strip()
    return labels


def _host_capacity() -> tuple[int, int]:
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return os.cpu_count() or 1, mem_kb // 1024


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_defaults,
    help="TOML file of these options (e.g. /etc/usher/lnm.toml); flags given here win.",
)
@click.option(
    "--ctrl",
    "ctrl_url",
    required=True,
    envvar="USHER_CTRL",
    help="Controller URL, e.g. https://ctrl.example.org:8760",
)
@click.option("--name", required=True, help="This node's name.")
@click.option(
    "--driver",
    default="fake",
    show_default=True,
    help="VMM driver: the name of an installed usher.drivers entry point (fake, qemu, …)",
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default="/var/lib/usher-lnm", show_default=True
)
@click.option("--vcpus", type=click.IntRange(min=1), help="vCPUs to offer (default: host's).")
@click.option("--memory-mb", type=click.IntRange(min=1), help="Memory to offer (default: host's).")
@click.option("--labels", help="k=v,k2=v2")
@click.option(
    "--storage-dir",
    "storage_dir",
    envvar="USHER_STORAGE",
    default="/var/lib/usher/storage",
    show_default=True,
    help="Shared storage (images, VM disks) that every node of the cluster sees.",
)
@click.option(
    "--join-token-file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="USHER_JOIN_TOKEN_FILE",
    help="File holding a join token (from `usher node token`), needed until this node has "
    f"its own credential ({CREDENTIAL_FILE} in the state dir).",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="USHER_CA",
    help="CA certificate to verify the controller with (https/wss; default: the system's).",
)
@click.option(
    "--migration-host",
    default="127.0.0.1",
    show_default=True,
    help="Address incoming live migrations listen on.",
)
@click.option(
    "--driver-option",
    "driver_options",
    multiple=True,
    metavar="KEY=JSON",
    callback=parse_kwargs,
    help="Driver option, e.g. latency=0.05",
)
@click.option("-v", "--verbose", is_flag=True)
def lnm(
    ctrl_url: str,
    name: str,
    driver: str,
    state_dir: str,
    vcpus: int | None,
    memory_mb: int | None,
    labels: str | None,
    storage_dir: str,
    join_token_file: str | None,
    ca_file: str | None,
    migration_host: str,
    driver_options: dict[str, object],
    verbose: bool,
) -> None:
    """Run a local node manager for this host."""

    from usher.lnm.agent import LNM, LNMConfig, Refused
    from usher.vmm.base import DriverError, load_driver

    _daemon(verbose)
    node_dir = Path(state_dir)
    node_dir.mkdir(parents=True, exist_ok=True)
    credential_file = node_dir / CREDENTIAL_FILE
    if not credential_file.exists() and not join_token_file:
        raise click.UsageError(
            f"this node has no credential yet ({credential_file}): give a join token "
            "with --join-token-file (an admin makes one with `usher node token`)"
        )
    host_vcpus, host_mem = _host_capacity()
    vcpus, memory_mb = vcpus or host_vcpus, memory_mb or host_mem
    options = {"vcpus": vcpus, "memory_mb": memory_mb, "storage_dir": storage_dir}
    options.update(driver_options)
    try:
        drv = load_driver(driver, state_dir=str(node_dir / driver), options=options)
    except DriverError as exc:
        raise click.ClickException(str(exc)) from exc
    config = LNMConfig(
        ctrl_url=ctrl_url,
        name=name,
        credential_file=credential_file,
        join_token=Path(join_token_file).read_text().strip() if join_token_file else None,
        ca_file=ca_file,
        vcpus=vcpus,
        memory_mb=memory_mb,
        labels=_parse_labels(labels),
        migration_host=migration_host,
    )
    agent = LNM(config, drv)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)

    try:
        gctune.tune()
        asyncio.run(run())
    except Refused as exc:
        raise click.ClickException(f"the controller refused this node: {exc}") from exc


@main.command(
    "driver-check",
    context_settings={"ignore_unknown_options": True},
)
@click.argument("driver")
@click.option("--site", help="module:object, the usher.conformance.DriverSite to run it with.")
@click.option(
    "--driver-option",
    "driver_options",
    multiple=True,
    metavar="KEY=JSON",
    help="Driver option for every host, e.g. latency=0.05",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def driver_check(
    driver: str, site: str | None, driver_options: tuple[str, ...], pytest_args: tuple[str, ...]
) -> None:
    """Check that VMM driver DRIVER keeps the driver contract: run the conformance suite
    (usher.conformance) on it; PYTEST_ARGS (after --) go to pytest, e.g. -- -x -k migration."""
    from usher.conformance.run import run

    try:
        status = run(driver, site, driver_options, pytest_args)
    except ImportError as exc:
        raise click.ClickException(
            f"the conformance suite needs pytest and pytest-asyncio ({exc}): "
            "pip install 'usher[conformance]'"
        ) from exc
    raise SystemExit(status)


main.add_command(local)
main.add_command(install)
main.add_command(admin_token)
main.add_command(image)
main.add_command(node)
main.add_command(backup)
main.add_command(restore)


if __name__ == "__main__":
    main()
