"""``ush ops``, ``op``, ``wait`` and ``cancel``: operations."""

from __future__ import annotations

import click

from usher.cli.ush_context import Ush, pass_ush
from usher.cli.ush_group import Failure
from usher.cli.ush_outcome import conclude
from usher.model import OpKind, OpStatus


@click.command()
@click.option("--status", type=click.Choice([status.value for status in OpStatus]))
@click.option("--kind", type=click.Choice([kind.value for kind in OpKind]))
@click.option("--vm", help="Only operations on this VM.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@pass_ush
def ops(ush: Ush, status: str | None, kind: str | None, vm: str | None, limit: int) -> None:
    """List operations, newest first."""
    page = ush.client.list_operations(status=status, kind=kind, vm=vm, limit=limit)
    ush.out.operations(page.items, page.total)


@click.command()
@click.argument("op_id", metavar="ID")
@pass_ush
def op(ush: Ush, op_id: str) -> None:
    """Show one operation."""
    ush.out.operation(ush.client.get_operation(op_id))


@click.command("wait")
@click.argument("op_id", metavar="ID")
@pass_ush
def wait_op(ush: Ush, op_id: str) -> None:
    """Wait for an operation to finish; exit 1 unless it succeeded."""
    conclude(ush, op_id)


@click.command()
@click.argument("op")
@pass_ush
def cancel(ush: Ush, op: str) -> None:
    """Cancel operation OP: steps not yet begun never run, running migrations are called off;
    other running steps go on (ush says why). Exit 1 if nothing was cancelled."""
    answer = ush.client.cancel(op)
    outcome = answer.result.get("cancel", {})
    for why in outcome.get("refused", {}).values():
        ush.out.note(why)
    ush.out.submitted(answer)
    if not outcome.get("cancelled"):
        raise Failure(f"nothing of {answer.id} was cancelled: every step of it goes on")


COMMANDS: tuple[click.Command, ...] = (ops, op, wait_op, cancel)
