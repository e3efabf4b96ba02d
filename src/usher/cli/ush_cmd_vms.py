"""``ush start``, the power actions, ``migrate``, ``list``, ``show`` and ``console``: VMs."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import click
from click.core import ParameterSource

from usher.bounds import MAX_DATA_DISKS, BoundsError, parse_gib
from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_names import complete_vm_names
from usher.cli.ush_options import (
    dry_run_option,
    kwarg_option,
    require_targets,
    split_names,
    strict_option,
    tag_option,
    wait_option,
)
from usher.cli.ush_outcome import planned, submitted
from usher.cli.ush_render import VM_COLUMNS, VM_FIELDS
from usher.client import UsherError
from usher.model import (
    MAX_MEMORY_MB,
    MAX_VCPUS,
    MIN_MEMORY_MB,
    VM,
    Operation,
    OpKind,
    Plan,
    VMState,
)

CREATE_OPTIONS = (
    "count",
    "names",
    "name_prefix",
    "vcpus",
    "memory_mb",
    "image",
    "disk_size",
    "data_disks",
    "node",
    "tags",
)
NAMING_OPTIONS = ("count", "names", "name_prefix")
"""Options that say "make new VMs" on their own (the others only size or place them)."""


def _new_vm_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options of new VMs: how many, their names, size, image and node."""
    for option in reversed(
        (
            click.option(
                "-n",
                "--count",
                type=click.IntRange(1),
                default=1,
                show_default=True,
                help="How many VMs to create.",
            ),
            click.option("--cluster", help="Virtual cluster of the VMs."),
            click.option(
                "--vcpus", type=click.IntRange(1, MAX_VCPUS), default=1, show_default=True
            ),
            click.option(
                "--memory",
                "memory_mb",
                type=click.IntRange(MIN_MEMORY_MB, MAX_MEMORY_MB),
                default=256,
                show_default=True,
                help="Memory in MiB.",
            ),
            click.option("--image", default="tiny", show_default=True),
            click.option(
                "--disk-size",
                metavar="SIZE",
                callback=_disk_size,
                help="The root disk's size, e.g. 8G (M/MiB, G/GiB, T/TiB; whole GiB; default: "
                "the image's). The guest's root file system grows to it on first boot.",
            ),
            click.option(
                "--disk",
                "data_disks",
                metavar="SIZE",
                multiple=True,
                callback=_disk_sizes,
                help="A data disk of SIZE, e.g. 2G; repeatable, attached in this order.",
            ),
            click.option(
                "--name-prefix", help="Name VMs PREFIX-<n> (default: the cluster, or vm)."
            ),
            click.option(
                "--names", callback=split_names, help="Comma-separated names, one VM each."
            ),
            click.option("--node", help="Place the new VMs on this node."),
            tag_option("Tag the new VMs (env=prod, team/web). Repeatable."),
            kwarg_option,
            wait_option,
            dry_run_option,
        )
    ):
        command = option(command)
    return command


def _disk_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_gib(value)
    except BoundsError as exc:
        raise click.BadParameter(str(exc)) from None


def _disk_sizes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[int]:
    if len(values) > MAX_DATA_DISKS:
        raise click.BadParameter(f"at most {MAX_DATA_DISKS} data disks, not {len(values)}")
    return [size for value in values if (size := _disk_size(ctx, param, value)) is not None]


def _read_text(path: str, what: str, limit: int = 64 * 1024) -> str:
    try:
        with click.open_file(path, encoding="utf-8") as file:
            text = str(file.read(limit + 1))
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint=what) from None
    if len(text) > limit:
        raise click.BadParameter(f"{path} is over {limit // 1024} KiB", param_hint=what)
    return text


def guest_kwargs(user_data: str | None, ssh_keys: tuple[str, ...]) -> dict[str, Any]:
    """The ``user_data`` and ``ssh_keys`` kwargs of ``--user-data`` and ``--ssh-key`` files."""
    kwargs: dict[str, Any] = {}
    if user_data is not None:
        kwargs["user_data"] = _read_text(user_data, "--user-data")
    keys = [
        line.strip()
        for path in ssh_keys
        for line in _read_text(path, "--ssh-key").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    if keys:
        kwargs["ssh_keys"] = keys
    return kwargs


@click.command()
@_new_vm_options
@click.option(
    "--user-data",
    metavar="FILE",
    help="Your own cloud-init user data (#cloud-config or a script) for images that run "
    "cloud-init; `-` reads stdin.",
)
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    metavar="FILE",
    help="A public key file your account in the guests also accepts (besides the keys of "
    "`ush key`). Repeatable.",
)
@pass_ush
def create(ush: Ush, user_data: str | None, ssh_keys: tuple[str, ...], **options: Any) -> None:
    """Create new VMs: -n of them (or one per --names entry), in --cluster if given."""
    options["kwargs"] = {**options["kwargs"], **guest_kwargs(user_data, ssh_keys)}
    _create(ush, **options)


def _create(
    ush: Ush,
    count: int,
    cluster: str | None,
    vcpus: int,
    memory_mb: int,
    image: str,
    disk_size: int | None,
    data_disks: list[int],
    name_prefix: str | None,
    names: list[str],
    node: str | None,
    tags: tuple[str, ...],
    kwargs: dict[str, Any],
    wait: bool,
    dry_run: bool,
) -> None:
    make = ush.client.plan_start if dry_run else ush.client.create_vms
    op = make(
        count=count,
        names=names or None,
        name_prefix=name_prefix,
        cluster=cluster,
        vcpus=vcpus,
        memory_mb=memory_mb,
        image=image,
        node=node,
        kwargs=kwargs,
        tags=tags,
        disk_gb=disk_size,
        disks=data_disks,
    )
    if isinstance(op, Plan):
        planned(ush, op)
        return
    submitted(ush, op, wait)


@click.command()
@click.argument("vms", nargs=-1, shell_complete=complete_vm_names)
@_new_vm_options
@strict_option
@pass_ush
def start(ush: Ush, vms: tuple[str, ...], strict: bool, **options: Any) -> None:
    """Boot stopped VMs (ids or names) and/or a --cluster's.

    With -n, --names or --name-prefix, creates new VMs instead, as `ush create` does (the
    shorthand `ush start -n 3 --cluster web`).
    """
    ctx = click.get_current_context()
    given = [
        name
        for name in CREATE_OPTIONS
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    flags = [f"--{name.replace('_', '-')}" for name in given]
    if any(name in NAMING_OPTIONS for name in given):
        if vms:
            raise click.UsageError(
                f"{flags[0]} makes new VMs, which cannot also be named as arguments; "
                "to boot existing VMs, name them without it"
            )
        _create(ush, **options)
        return
    cluster = options["cluster"]
    if not vms and not cluster:
        raise click.UsageError(
            "name the VMs to boot (or --cluster); to make new ones, use `ush create`"
        )
    if flags:
        target = f"--cluster {cluster}" if cluster else " ".join(vms)
        create_as = " ".join(([f"--cluster {cluster}"] if cluster else []) + flags)
        raise click.UsageError(
            f"{flags[0]} sizes or places new VMs, but `ush start {target}` boots existing "
            f"ones: to create, use `ush create {create_as} …`; to boot, leave out "
            f"{' '.join(flags)}"
        )
    if options["dry_run"]:
        raise click.UsageError("--dry-run plans new VMs (or migrations), not boots")
    op = ush.client.action(OpKind.START, vms, cluster, kwargs=options["kwargs"], strict=strict)
    submitted(ush, op, options["wait"])


TIMEOUT_HELP = {
    OpKind.STOP: "Seconds a guest has to power off on its own (ACPI) before it is stopped "
    "hard (default: the driver's, 30 for qemu).",
}
FORCE_HELP = {OpKind.STOP: "Stop at once (power cut), without asking the guest first."}


def _action_command(kind: OpKind, summary: str) -> click.Command:
    timed = kind in (OpKind.STOP, OpKind.REBOOT, OpKind.CYCLE, OpKind.DESTROY)

    @click.command(name=kind.value, help=f"{summary} VMs (ids or names) and/or a --cluster.")
    @click.argument("vms", nargs=-1, shell_complete=complete_vm_names)
    @click.option("--cluster", help="Every VM of this virtual cluster.")
    @kwarg_option
    @wait_option
    @strict_option
    @pass_ush
    def command(
        ush: Ush,
        vms: tuple[str, ...],
        cluster: str | None,
        kwargs: dict[str, Any],
        wait: bool,
        strict: bool,
        timeout: float | None = None,
        force: bool = False,
    ) -> None:
        require_targets(vms, cluster)
        if timeout is not None:
            kwargs["timeout"] = timeout
        if force:
            kwargs["hard"] = True
        op = ush.client.action(kind, vms, cluster, kwargs=kwargs, strict=strict)
        graceful = kind is OpKind.STOP and not force
        submitted(
            ush, op, wait, functools.partial(why_a_stop_waits, grace=timeout) if graceful else None
        )

    if timed:
        click.option(
            "--timeout",
            type=click.FloatRange(0, 86400, min_open=True),
            help=TIMEOUT_HELP.get(kind, "Seconds each VM's step may take before it fails."),
        )(command)
    if kind in FORCE_HELP:
        click.option("--force", is_flag=True, help=FORCE_HELP[kind])(command)
    return command


EXPLAIN_AFTER = 3.0
"""Seconds a stop runs before ush says what it waits for."""


def why_a_stop_waits(op: Operation, waited: float, grace: float | None) -> str | None:
    """What a graceful stop still running after :data:`EXPLAIN_AFTER` seconds waits for."""
    if op.done or waited < EXPLAIN_AFTER:
        return None
    counts = op.result.get("progress") or {}
    left = (counts.get("total") or len(op.targets)) - sum(
        counts.get(key, 0) for key in ("done", "failed", "skipped")
    )
    guests = "a guest" if left == 1 else f"{left} guests" if left > 1 else "the guests"
    until = f"{grace:g} s" if grace is not None else "the driver's grace (30 s for qemu)"
    return (
        f"{op.id}: waiting for {guests} to power off: each was asked to (ACPI) and is "
        f"stopped hard after {until} (`ush stop --force` stops at once, without asking)"
    )


ACTIONS = tuple(
    _action_command(kind, summary)
    for kind, summary in (
        (OpKind.STOP, "Stop"),
        (OpKind.DESTROY, "Destroy"),
        (OpKind.PAUSE, "Pause"),
        (OpKind.RESUME, "Resume"),
        (OpKind.REBOOT, "Reboot"),
        (OpKind.CYCLE, "Power-cycle (stop, then start)"),
    )
)


@click.command()
@click.argument("vms", nargs=-1, shell_complete=complete_vm_names)
@click.option("--cluster", help="Every VM of this virtual cluster.")
@click.option("--to", "target_node", help="Target node (default: the scheduler picks).")
@kwarg_option
@wait_option
@dry_run_option
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
    require_targets(vms, cluster)
    if dry_run:
        planned(ush, ush.client.plan_migrate(vms, cluster, target_node, kwargs))
        return
    submitted(ush, ush.client.migrate(vms, cluster, target_node, kwargs), wait)


SORT_KEYS: dict[str, Callable[[VM], Any]] = {
    "name": lambda vm: vm.name,
    "node": lambda vm: vm.node or "",
    "state": lambda vm: vm.state.value,
    "cluster": lambda vm: vm.cluster or "",
    "created": lambda vm: vm.created_at,
    "vcpus": lambda vm: vm.spec.vcpus,
    "memory": lambda vm: vm.spec.memory_mb,
}


def _columns(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    names = split_names(_ctx, _param, value) or list(VM_COLUMNS)
    unknown = [name for name in names if name not in VM_FIELDS]
    if unknown:
        raise click.BadParameter(f"no column {unknown[0]!r}; columns: {', '.join(VM_FIELDS)}")
    return names


@click.command("list")
@click.argument("patterns", nargs=-1, shell_complete=complete_vm_names)
@click.option("--cluster")
@click.option("--owner")
@click.option("--node")
@click.option("--state", type=click.Choice([state.value for state in VMState]))
@tag_option("Only VMs with this tag (repeated: with every one).")
@click.option("--sort", type=click.Choice(list(SORT_KEYS)), help="Order by this field.")
@click.option("--columns", callback=_columns, help=f"Comma-separated, of: {', '.join(VM_FIELDS)}.")
@click.option("-w", "--watch", is_flag=True, help="Show the list again every 2 s, until Ctrl-C.")
@pass_ush
def list_vms(
    ush: Ush,
    patterns: tuple[str, ...],
    cluster: str | None,
    owner: str | None,
    node: str | None,
    state: str | None,
    tags: tuple[str, ...],
    sort: str | None,
    columns: list[str],
    watch: bool,
) -> None:
    """List VMs (all pages); PATTERNS keep the VMs whose names match one (web-*, db-?)."""

    def fetch() -> list[VM]:
        vms = ush.client.iter_vms(cluster=cluster, owner=owner, node=node, state=state, tags=tags)
        shown = [vm for vm in vms if not patterns or any(fnmatchcase(vm.name, p) for p in patterns)]
        return sorted(shown, key=SORT_KEYS[sort]) if sort else shown

    if not watch:
        ush.out.vms(fetch(), columns)
        return
    try:
        while True:
            vms = fetch()
            click.clear()
            ush.out.vms(vms, columns)
            time.sleep(2)
    except KeyboardInterrupt:
        return


@click.command()
@click.argument("vm", shell_complete=complete_vm_names)
@pass_ush
def show(ush: Ush, vm: str) -> None:
    """Show one VM, by id or name."""
    ush.out.vm(ush.client.get_vm(vm))


@click.command()
@click.argument("vm", shell_complete=complete_vm_names)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until Ctrl-C.")
@click.option(
    "-a",
    "--attach",
    is_flag=True,
    help="Read-write: what you type goes to the guest; Ctrl-] detaches.",
)
@click.option(
    "--linger",
    type=click.FloatRange(0, 3600),
    default=2.0,
    show_default=True,
    help="With --attach and piped input: seconds to stay attached after the input ends.",
)
@click.option("--interval", type=float, default=0.5, show_default=True, hidden=True)
@pass_ush
def console(ush: Ush, vm: str, follow: bool, attach: bool, linger: float, interval: float) -> None:
    """Show a VM's serial console output (--follow to tail it, --attach to type into it)."""
    if attach:
        _attach(ush, vm, linger)
        return
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


def _attach(ush: Ush, vm: str, linger: float) -> None:
    """``ush console --attach``: see :mod:`usher.cli.ush_attach`."""
    from usher.cli.ush_attach import run_attached  # termios and a WebSocket client: only here

    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"attached to {vm}'s console; Ctrl-] detaches", err=True)
    with ush.client.attach_console(vm) as attached:
        why = run_attached(attached, stdin=sys.stdin.fileno(), linger=linger)
    if why is not None:
        raise UsherError(None, f"the console ended: {why}")
    if interactive:
        click.echo("\r\ndetached", err=True)


COMMANDS: tuple[click.Command, ...] = (
    create,
    start,
    *ACTIONS,
    migrate,
    list_vms,
    show,
    console,
)
