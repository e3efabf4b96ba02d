"""``ush``, the Usher shell: one-shot commands (``ush start -n 4``) and, alone, a shell.

Exit codes: 0 success, 1 an API error or an operation that failed or was vetoed, 2 a usage
error. API errors print ``error: <message>`` on stderr.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from usher.cli.ush_render import Renderer
from usher.cli.ush_session import Session
from usher.cli.ush_shell import Shell
from usher.client import Client, UsherError
from usher.model import Operation, OpKind, OpStatus, Plan, VMState

P = ParamSpec("P")
R = TypeVar("R")

OUTPUT_KEY = "ush.output"


class Failure(click.ClickException):
    """An API error, shown as ``error: <message>``."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _store_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[OUTPUT_KEY] = value


def output_option() -> click.Option:
    """``-o/--output``, accepted before the command and after it."""
    return click.Option(
        ["-o", "--output"],
        type=click.Choice(["table", "json"]),
        expose_value=False,
        callback=_store_output,
        help="table, or json: machine-readable, and nothing else on stdout.",
    )


class UshGroup(click.Group):
    """Adds ``-o`` to every command and turns API errors into :class:`Failure`."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(output_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsherError as exc:
            raise Failure(exc.message) from None


@dataclass
class Ush:
    """What a command works with: the client and the renderer of this invocation."""

    session: Session
    out: Renderer

    @property
    def client(self) -> Client:
        return self.session.client


def pass_ush(command: Callable[Concatenate[Ush, P], R]) -> Callable[P, R]:
    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        ctx = click.get_current_context()
        session = ctx.find_object(Session)
        assert session is not None, "the ush group always sets a Session"
        out = Renderer(ctx.meta.get(OUTPUT_KEY) or session.output)
        return command(Ush(session, out), *args, **kwargs)

    return wrapper


# --- option helpers ----------------------------------------------------------------------


def _split_names(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _parse_kwargs(
    _ctx: click.Context, _param: click.Parameter, values: Sequence[str]
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    if match := _AGO.match(value):
        return time.time() - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(
            "use epoch seconds or a duration ago like 30s, 10m, 2h, 1d"
        ) from None


def _kwarg_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--kwarg",
        "kwargs",
        multiple=True,
        metavar="KEY=VALUE",
        callback=_parse_kwargs,
        help="Argument for plugins and drivers (VALUE is read as JSON if it parses). Repeatable.",
    )(command)


def _wait_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--wait/--no-wait",
        default=True,
        help="Wait for the operation (default) or print its id and return.",
    )(command)


def _dry_run_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Only show where the VMs would go and why other nodes would not do.",
    )(command)


def _require_targets(vms: Sequence[str], cluster: str | None) -> None:
    if not vms and not cluster:
        raise click.UsageError("name the VMs (ids or names), or give --cluster")


# --- operations --------------------------------------------------------------------------


def _conclude(ush: Ush, op: Operation | str) -> None:
    """Wait for the operation with a progress bar, show how it went; exit 1 unless it succeeded."""
    if isinstance(op, str) or not op.done:
        op_id = op if isinstance(op, str) else op.id
        try:
            with ush.out.progress() as on_progress:
                op = ush.client.wait(op_id, on_progress=on_progress)
        except KeyboardInterrupt:
            ush.out.note(f"{op_id} goes on; `ush wait {op_id}` waits for it again")
            raise
    ush.out.outcome(op)
    if op.status is not OpStatus.SUCCEEDED:
        click.get_current_context().exit(1)


def _submitted(ush: Ush, op: Operation, wait: bool) -> None:
    if wait:
        _conclude(ush, op)
    else:
        ush.out.submitted(op)


# --- commands ----------------------------------------------------------------------------


@click.group(cls=UshGroup, invoke_without_command=True, params=[output_option()])
@click.option("--url", help="Controller URL [env USHER_URL, ~/.usher/config.toml].")
@click.option("--token", help="API token [env USHER_TOKEN, ~/.usher/config.toml].")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """The Usher shell: start, list and control VMs on an Usher controller.

    Without a command, ush starts an interactive shell.
    """
    if not isinstance(ctx.obj, Session) or url or token:
        base = ctx.obj if isinstance(ctx.obj, Session) else Session()
        ctx.obj = base.derive(url, token)
        ctx.call_on_close(ctx.obj.close)
    if ctx.invoked_subcommand is not None:
        return
    if ctx.obj.interactive:
        click.echo(ctx.get_help())
        return
    ctx.obj.interactive = True
    ctx.obj.output = ctx.meta.get(OUTPUT_KEY, ctx.obj.output)
    Shell(cli, ctx.obj).run()


CREATE_OPTIONS = ("count", "names", "name_prefix", "vcpus", "memory_mb", "image", "node")


@cli.command()
@click.argument("vms", nargs=-1)
@click.option(
    "-n",
    "--count",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="How many VMs to create.",
)
@click.option("--cluster", help="Virtual cluster to create the VMs in, or to boot.")
@click.option("--vcpus", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--memory",
    "memory_mb",
    type=click.IntRange(16),
    default=256,
    show_default=True,
    help="Memory in MiB.",
)
@click.option("--image", default="tiny", show_default=True)
@click.option("--name-prefix", help="Name VMs PREFIX-<n> (default: the cluster, or vm).")
@click.option("--names", callback=_split_names, help="Comma-separated names, one VM each.")
@click.option("--node", help="Place the new VMs on this node.")
@_kwarg_option
@_wait_option
@_dry_run_option
@pass_ush
def start(
    ush: Ush,
    vms: tuple[str, ...],
    count: int,
    cluster: str | None,
    vcpus: int,
    memory_mb: int,
    image: str,
    name_prefix: str | None,
    names: list[str],
    node: str | None,
    kwargs: dict[str, Any],
    wait: bool,
    dry_run: bool,
) -> None:
    """Create new VMs, or boot stopped ones.

    Given VMs (ids or names), or only --cluster, boots those stopped VMs. Otherwise creates
    -n new VMs (or one per --names entry), in --cluster if given.
    """
    ctx = click.get_current_context()
    creating = [
        f"--{name.replace('_', '-')}"
        for name in CREATE_OPTIONS
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if vms or (cluster and not creating):
        if creating:
            raise click.UsageError(f"{creating[0]} only applies to new VMs, not when booting")
        if dry_run:
            raise click.UsageError("--dry-run plans new VMs (or migrations), not boots")
        op = ush.client.start_existing(vms, cluster, kwargs)
    else:
        create = ush.client.plan_start if dry_run else ush.client.create_vms
        op = create(
            count=count,
            names=names or None,
            name_prefix=name_prefix,
            cluster=cluster,
            vcpus=vcpus,
            memory_mb=memory_mb,
            image=image,
            node=node,
            kwargs=kwargs,
        )
    if isinstance(op, Plan):
        _planned(ush, op)
        return
    _submitted(ush, op, wait)


def _planned(ush: Ush, plan: Plan) -> None:
    """Show a dry run's plan; exit 1 when nothing fits."""
    ush.out.plan(plan)
    if plan.error:
        raise Failure(plan.error)


def _action_command(kind: OpKind, summary: str) -> click.Command:
    @click.command(name=kind.value, help=f"{summary} VMs (ids or names) and/or a --cluster.")
    @click.argument("vms", nargs=-1)
    @click.option("--cluster", help="Every VM of this virtual cluster.")
    @_kwarg_option
    @_wait_option
    @pass_ush
    def command(
        ush: Ush, vms: tuple[str, ...], cluster: str | None, kwargs: dict[str, Any], wait: bool
    ) -> None:
        _require_targets(vms, cluster)
        _submitted(ush, ush.client.action(kind, vms, cluster, kwargs=kwargs), wait)

    return command


for _kind, _summary in (
    (OpKind.STOP, "Stop"),
    (OpKind.DESTROY, "Destroy"),
    (OpKind.PAUSE, "Pause"),
    (OpKind.RESUME, "Resume"),
    (OpKind.REBOOT, "Reboot"),
    (OpKind.CYCLE, "Power-cycle (stop, then start)"),
):
    cli.add_command(_action_command(_kind, _summary))


@cli.command()
@click.argument("vms", nargs=-1)
@click.option("--cluster", help="Every VM of this virtual cluster.")
@click.option("--to", "target_node", help="Target node (default: the scheduler picks).")
@_kwarg_option
@_wait_option
@_dry_run_option
@pass_ush
def migrate(
    ush: Ush,
    vms: tuple[str, ...],
    cluster: str | None,
    target_node: str | None,
    kwargs: dict[str, Any],
    wait: bool,
    dry_run: bool,
) -> None:
    """Move VMs (ids or names) and/or a --cluster to another node."""
    _require_targets(vms, cluster)
    if dry_run:
        _planned(ush, ush.client.plan_migrate(vms, cluster, target_node, kwargs))
        return
    _submitted(ush, ush.client.migrate(vms, cluster, target_node, kwargs), wait)


@cli.command("list")
@click.option("--cluster")
@click.option("--owner")
@click.option("--node")
@click.option("--state", type=click.Choice([state.value for state in VMState]))
@pass_ush
def list_vms(
    ush: Ush, cluster: str | None, owner: str | None, node: str | None, state: str | None
) -> None:
    """List VMs (all pages)."""
    ush.out.vms(ush.client.iter_vms(cluster=cluster, owner=owner, node=node, state=state))


@cli.command()
@click.argument("vm")
@pass_ush
def show(ush: Ush, vm: str) -> None:
    """Show one VM, by id or name."""
    ush.out.vm(ush.client.get_vm(vm))


@cli.command()
@pass_ush
def nodes(ush: Ush) -> None:
    """List the nodes."""
    ush.out.nodes(ush.client.nodes())


@cli.command()
@click.argument("name")
@pass_ush
def node(ush: Ush, name: str) -> None:
    """Show one node."""
    ush.out.node(ush.client.node(name))


@cli.command()
@click.argument("name")
@pass_ush
def drain(ush: Ush, name: str) -> None:
    """Place no new VMs on a node."""
    ush.out.node(ush.client.drain(name))


@cli.command()
@click.argument("name")
@pass_ush
def undrain(ush: Ush, name: str) -> None:
    """Let the scheduler place VMs on a node again."""
    ush.out.node(ush.client.undrain(name))


@cli.command()
@click.option("--status", type=click.Choice([status.value for status in OpStatus]))
@click.option("--kind", type=click.Choice([kind.value for kind in OpKind]))
@click.option("--vm", help="Only operations on this VM.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@pass_ush
def ops(ush: Ush, status: str | None, kind: str | None, vm: str | None, limit: int) -> None:
    """List operations, newest first."""
    page = ush.client.list_operations(status=status, kind=kind, vm=vm, limit=limit)
    ush.out.operations(page.items, page.total)


@cli.command()
@click.argument("op_id", metavar="ID")
@pass_ush
def op(ush: Ush, op_id: str) -> None:
    """Show one operation."""
    ush.out.operation(ush.client.get_operation(op_id))


@cli.command("wait")
@click.argument("op_id", metavar="ID")
@pass_ush
def wait_op(ush: Ush, op_id: str) -> None:
    """Wait for an operation to finish; exit 1 unless it succeeded."""
    _conclude(ush, op_id)


@cli.command()
@click.option("--name", help="Only events with this name (e.g. stop_failure).")
@click.option("--vm", help="Only events about this VM.")
@click.option("--node", help="Only events about this node.")
@click.option("--operation", help="Only events of this operation.")
@click.option("--since", callback=_parse_since, help="Epoch seconds, or ago: 30s, 10m, 2h, 1d.")
@click.option("-f", "--follow", is_flag=True, help="Stream new events until Ctrl-C.")
@pass_ush
def events(
    ush: Ush,
    name: str | None,
    vm: str | None,
    node: str | None,
    operation: str | None,
    since: float | None,
    follow: bool,
) -> None:
    """Show recorded events, oldest first, or follow new ones as they happen."""
    if not follow:
        ush.out.events(ush.client.iter_events(name, vm, node, operation, since))
        return
    if operation or since is not None:
        raise click.UsageError("--follow filters by --name, --vm and --node only")
    try:
        for event in ush.client.stream_events(name, vm, node):
            ush.out.event(event)
    except KeyboardInterrupt:
        return


@cli.command()
@click.argument("vm")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C.")
@click.option("--interval", type=float, default=0.5, show_default=True, hidden=True)
@pass_ush
def console(ush: Ush, vm: str, follow: bool, interval: float) -> None:
    """Show a VM's serial console output (--follow to tail it)."""
    offset = 0
    try:
        while True:
            chunk = ush.client.console(vm, offset)
            click.echo(chunk.data, nl=False)
            offset = chunk.next
            if not follow:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


@cli.command()
@pass_ush
def images(ush: Ush) -> None:
    """List the guest images of the catalogue."""
    ush.out.images(ush.client.images())


@cli.group(cls=UshGroup)
def image() -> None:
    """Manage guest images: import, show, rm."""


@image.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Name of the new image.")
@click.option("--description", default="", help="What the image is.")
@pass_ush
def image_import(ush: Ush, path: str, name: str, description: str) -> None:
    """Upload a qcow2 disk image into the catalogue."""
    ush.out.image(ush.client.import_image(path, name, description))


@image.command("show")
@click.argument("name")
@pass_ush
def image_show(ush: Ush, name: str) -> None:
    """Show one image."""
    ush.out.image(ush.client.image(name))


@image.command("rm")
@click.argument("name")
@pass_ush
def image_rm(ush: Ush, name: str) -> None:
    """Delete an image no VM uses."""
    ush.client.delete_image(name)
    ush.out.note(f"deleted image {name}")


@cli.command()
@pass_ush
def whoami(ush: Ush) -> None:
    """Show who the token belongs to."""
    ush.out.principal(ush.client.whoami())


def _load_extensions() -> None:
    """Commands of plugins' own (``ush login``, ``ush audit``, …) live in modules
    ``usher.cli.ush_cmd_*``; each has ``register(group)``, called here once."""
    import importlib
    import pkgutil

    import usher.cli

    for info in pkgutil.iter_modules(usher.cli.__path__):
        if info.name.startswith("ush_cmd_") and info.name.removeprefix("ush_cmd_") not in (_loaded):
            importlib.import_module(f"usher.cli.{info.name}").register(cli)
            _loaded.add(info.name.removeprefix("ush_cmd_"))


_loaded: set[str] = set()


def main() -> None:
    _load_extensions()
    cli.main(prog_name="ush")


if __name__ == "__main__":  # python -m usher.cli.ush: run the importable module's main
    from usher.cli import ush as _module

    _module.main()
