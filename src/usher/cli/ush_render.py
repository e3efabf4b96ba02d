"""How ush shows things: rich tables for people, JSON for programs.

With ``-o json`` everything ush prints on stdout is one JSON document (a JSON object per
line for a followed event stream); messages and progress go to stderr.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
from pydantic import BaseModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from usher.client.protocol import ProgressCallback
from usher.model import VM, Event, Image, Node, Operation, OpStatus, Plan, Principal

STATUS_STYLES = {
    OpStatus.SUCCEEDED: "green",
    OpStatus.FAILED: "red",
    OpStatus.VETOED: "red",
}


def fmt_time(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def fmt_value(value: Any) -> str:
    """A field value on one line: ``-`` for nothing, lists comma-separated, dicts as k=v."""
    if isinstance(value, _Lines):
        return str(value)
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, list):
        return ", ".join(fmt_value(item) for item in value)
    if isinstance(value, dict):
        return " ".join(f"{key}={fmt_value(item)}" for key, item in value.items())
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _Lines(str):
    """A value shown as it is, on several lines."""


def _lines(value: Any) -> Any:
    """A result's part: a mapping of mappings or long values one entry a line."""
    if isinstance(value, dict) and any(isinstance(v, dict | list | str) for v in value.values()):
        return _Lines("\n".join(f"{key}: {fmt_value(item)}" for key, item in value.items()))
    return value


def _table(*columns: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def _row(table: Table, *values: Any) -> None:
    table.add_row(*(Text(fmt_value(value)) for value in values))


def _details(rows: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows.items():
        grid.add_row(key, Text(fmt_value(value)))
    return grid


VM_FIELDS: dict[str, Callable[[VM], Any]] = {
    "id": lambda vm: vm.id,
    "name": lambda vm: vm.name,
    "cluster": lambda vm: vm.cluster,
    "owner": lambda vm: vm.owner,
    "node": lambda vm: vm.node,
    "state": lambda vm: vm.state,
    "desired": lambda vm: vm.desired_state,
    "vcpus": lambda vm: vm.spec.vcpus,
    "memory": lambda vm: f"{vm.spec.memory_mb} MiB",
    "image": lambda vm: vm.spec.image,
    "addresses": lambda vm: vm.addresses,
    "tags": lambda vm: vm.tags,
    "created": lambda vm: fmt_time(vm.created_at),
}
"""What ``ush list --columns`` may show, by name."""
Explain = Callable[[Operation, float], str | None]
"""What an operation still running after so many seconds waits for, if worth saying."""

VM_COLUMNS = ("id", "name", "cluster", "node", "state", "vcpus", "memory", "addresses")


class Renderer:
    """Prints results in the chosen output format (``table`` or ``json``)."""

    def __init__(self, output: str) -> None:
        self.json = output == "json"
        self.console = Console(highlight=False)
        if not self.console.is_terminal:  # piped: never truncate table cells
            self.console.width = 10_000
        self.err = Console(stderr=True, highlight=False)

    def emit(self, data: Any) -> None:
        click.echo(json.dumps(data, indent=2))

    def _model(self, model: BaseModel, rows: dict[str, Any]) -> None:
        if self.json:
            self.emit(model.model_dump(mode="json"))
        else:
            self.console.print(_details(rows))

    def mapping(self, data: dict[str, Any]) -> None:
        """A JSON object from a plugin's route: as JSON, or as a two-column table."""
        if self.json:
            self.emit(data)
        else:
            self.console.print(_details(data))

    def line(self, message: str) -> None:
        """One line for people on stdout, as it is (no markup)."""
        self.console.print(Text(message))

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """Rows under the given headings, each value on one line as :func:`fmt_value` puts it."""
        table = _table(*columns)
        for row in rows:
            _row(table, *row)
        self.console.print(table)

    def note(self, message: str) -> None:
        """A message for the person at the terminal, on stderr."""
        self.err.print(Text(message))

    def vms(self, vms: Iterable[VM], columns: Sequence[str] = VM_COLUMNS) -> None:
        vms = list(vms)
        if self.json:
            self.emit([vm.model_dump(mode="json") for vm in vms])
            return
        table = _table(*(column.upper() for column in columns))
        for vm in vms:
            _row(table, *(VM_FIELDS[column](vm) for column in columns))
        self.console.print(table)

    def vm(self, vm: VM) -> None:
        state = f"{vm.state} ({vm.state_reason})" if vm.state_reason else vm.state
        self._model(
            vm,
            {
                "id": vm.id,
                "name": vm.name,
                "owner": vm.owner,
                "cluster": vm.cluster,
                "state": state,
                "desired": vm.desired_state,
                "node": vm.node,
                "vcpus": vm.spec.vcpus,
                "memory": f"{vm.spec.memory_mb} MiB",
                "image": vm.spec.image,
                "addresses": vm.addresses,
                "tags": vm.tags,
                "kwargs": vm.spec.kwargs,
                "created": fmt_time(vm.created_at),
                "updated": fmt_time(vm.updated_at),
            },
        )

    def nodes(self, nodes: Iterable[Node]) -> None:
        nodes = list(nodes)
        if self.json:
            self.emit([node.model_dump(mode="json") for node in nodes])
            return
        table = _table("NAME", "STATE", "CONNECTED", "DRIVER", "VMS", "VCPUS", "MEMORY", "CPU")
        for node in nodes:
            use, cap = node.usage, node.capacity
            _row(
                table,
                node.name,
                node.state,
                "yes" if node.connected else "no",
                node.driver,
                use.vms,
                f"{use.vcpus}/{cap.vcpus}",
                f"{use.memory_mb}/{cap.memory_mb} MiB",
                f"{use.cpu_percent:.0f}%",
            )
        self.console.print(table)

    def node(self, node: Node) -> None:
        use, cap = node.usage, node.capacity
        self._model(
            node,
            {
                "name": node.name,
                "state": node.state,
                "connected": node.connected,
                "driver": node.driver,
                "vms": use.vms,
                "vcpus": f"{use.vcpus}/{cap.vcpus}",
                "memory": f"{use.memory_mb}/{cap.memory_mb} MiB (used {use.memory_used_mb})",
                "disk": f"{cap.disk_gb} GB",
                "cpu": f"{use.cpu_percent:.0f}%",
                "labels": node.labels,
                "capabilities": node.capabilities,
                "heartbeat": fmt_time(node.last_heartbeat),
                "joined": fmt_time(node.joined_at),
            },
        )

    def operations(self, ops: list[Operation], total: int) -> None:
        if self.json:
            self.emit([op.model_dump(mode="json") for op in ops])
            return
        table = _table("ID", "KIND", "STATUS", "PRINCIPAL", "TARGETS", "CREATED", "ERROR")
        for op in ops:
            _row(
                table,
                op.id,
                op.kind,
                op.status,
                op.principal,
                len(op.targets),
                fmt_time(op.created_at),
                op.error,
            )
        self.console.print(table)
        if total > len(ops):
            self.note(f"{len(ops)} of {total} operations shown; use --limit for more")

    def operation(self, op: Operation) -> None:
        self._model(
            op,
            {
                "id": op.id,
                "kind": op.kind,
                "status": op.status,
                "principal": op.principal,
                "targets": op.targets,
                "error": op.error,
                "created": fmt_time(op.created_at),
                "started": fmt_time(op.started_at),
                "finished": fmt_time(op.finished_at),
                **{f"result.{key}": _lines(value) for key, value in op.result.items()},
            },
        )

    def submitted(self, op: Operation) -> None:
        """An operation the user chose not to wait for: its id, for ``ush wait``."""
        if self.json:
            self.emit(op.model_dump(mode="json"))
        else:
            click.echo(op.id)

    def outcome(self, op: Operation) -> None:
        """How a finished operation went, with the error of every VM that failed."""
        if self.json:
            self.emit(op.model_dump(mode="json"))
            return
        line = Text(f"{op.kind} {op.id} ")
        line.append(str(op.status), style=STATUS_STYLES.get(op.status, "yellow"))
        progress = op.result.get("progress") or {}
        if "total" in progress:
            line.append(f": {progress.get('done', 0)}/{progress['total']} done")
            if progress.get("skipped"):
                line.append(f", {progress['skipped']} skipped")
            if progress.get("failed"):
                line.append(f", {progress['failed']} failed")
        if op.started_at is not None and op.finished_at is not None:
            line.append(f" in {op.finished_at - op.started_at:.1f}s")
        if "total_ms" in op.result:
            line.append(f" (migration {op.result['total_ms']} ms, ")
            line.append(f"downtime {op.result.get('downtime_ms', '?')} ms)")
        if op.error:
            line.append(f": {op.error}")
        self.console.print(line)
        for message in (op.result.get("skipped") or {}).values():
            self.console.print(Text(f"  skipped: {message}"))
        for vm_id, message in (op.result.get("errors") or {}).items():
            self.console.print(Text(f"  {vm_id}: {message}"))

    def events(self, events: Iterable[Event]) -> None:
        if self.json:
            self.emit([event.model_dump(mode="json") for event in events])
            return
        for event in events:
            self.event(event)

    def event(self, event: Event) -> None:
        """One event on one line (one JSON object per line with ``-o json``)."""
        if self.json:
            click.echo(event.model_dump_json())
            return
        line = Text(f"{fmt_time(event.time)} ")
        line.append(event.name, style="bold")
        for key, value in (
            ("vm", event.vm_id),
            ("node", event.node),
            ("op", event.operation_id),
            ("by", event.principal),
        ):
            if value is not None:
                line.append(f" {key}={value}")
        if event.data:
            line.append(f" {json.dumps(event.data, separators=(',', ':'))}", style="dim")
        self.console.print(line, soft_wrap=True)

    def plan(self, plan: Plan) -> None:
        """A dry run: each VM's node, then every node not chosen with the reason."""
        if self.json:
            self.emit(plan.model_dump(mode="json"))
            return
        table = _table("VM", "WOULD GO TO")
        for vm in plan.vms:
            _row(table, vm.name, vm.node or "-")
        self.console.print(table)
        if plan.rejected:
            rejected = _table("NODE", "NOT CHOSEN BECAUSE")
            for node, reason in sorted(plan.rejected.items()):
                _row(rejected, node, reason)
            self.console.print(rejected)
        self.note("dry run: nothing was changed")

    def images(self, images: Iterable[Image]) -> None:
        images = list(images)
        if self.json:
            self.emit([image.model_dump(mode="json") for image in images])
            return
        table = _table("NAME", "KIND", "SIZE", "FILES", "CREATED", "DESCRIPTION")
        for image in images:
            _row(
                table,
                image.name,
                image.kind,
                f"{image.size_bytes / 2**20:.1f} MiB",
                ", ".join(sorted(image.files)),
                fmt_time(image.created_at),
                image.description,
            )
        self.console.print(table)

    def image(self, image: Image) -> None:
        self._model(
            image,
            {
                "name": image.name,
                "kind": image.kind,
                "size": f"{image.size_bytes / 2**20:.1f} MiB",
                "files": image.files,
                "cmdline": image.cmdline or "-",
                "cloud-init": "yes" if image.cloud_init else "no",
                "created": fmt_time(image.created_at),
                "description": image.description,
            },
        )

    def principal(self, principal: Principal) -> None:
        self._model(
            principal,
            {
                "name": principal.name,
                "roles": principal.roles,
                "groups": principal.groups,
            },
        )

    @contextmanager
    def upload(self, total: int) -> Iterator[Callable[[int], object]]:
        """A bar of bytes sent out of ``total`` on stderr (when it is a terminal), fed by the
        callback yielded."""
        bar = Progress(
            TextColumn("uploading"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
            disable=not self.err.is_terminal,
        )
        with bar:
            task = bar.add_task("upload", total=total)
            yield lambda sent: bar.update(task, completed=sent)

    @contextmanager
    def progress(self, explain: Explain | None = None) -> Iterator[ProgressCallback]:
        """A progress bar on stderr (when it is a terminal), fed by the callback yielded;
        ``explain(op, seconds waited)`` may say once what the operation waits for (as a note,
        which a log shows too)."""
        bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
            disable=not self.err.is_terminal,
        )
        began = time.monotonic()
        explained: set[str] = set()
        with bar:
            task = bar.add_task("waiting", total=None, failed=0)

            def update(op: Operation) -> None:
                counts = op.result.get("progress") or {}
                failed = counts.get("failed", 0)
                waited = time.monotonic() - began
                if explain and op.id not in explained and (why := explain(op, waited)):
                    explained.add(op.id)
                    self.note(why)
                bar.update(
                    task,
                    description=f"{op.kind} {op.id} {op.status}",
                    completed=counts.get("done", 0) + failed + counts.get("skipped", 0),
                    total=counts.get("total") or len(op.targets) or None,
                    failed=failed,
                )

            yield update
