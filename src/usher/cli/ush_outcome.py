"""How a command that submits an operation ends: waited for, or its id printed; a plan shown."""

from __future__ import annotations

import click

from usher.cli.ush_context import Ush
from usher.cli.ush_group import Failure
from usher.cli.ush_render import Explain
from usher.model import Operation, OpStatus, Plan


def conclude(ush: Ush, op: Operation | str, explain: Explain | None = None) -> None:
    """Wait for the operation with a progress bar (``explain``: what it waits for, see
    :meth:`Renderer.progress`), show how it went; exit 1 unless it succeeded."""
    if isinstance(op, str) or not op.done:
        op_id = op if isinstance(op, str) else op.id
        try:
            with ush.out.progress(explain) as on_progress:
                op = ush.client.wait(op_id, on_progress=on_progress)
        except KeyboardInterrupt:
            ush.out.note(f"{op_id} goes on; `ush wait {op_id}` waits for it again")
            raise
    ush.out.outcome(op)
    if op.status is not OpStatus.SUCCEEDED:
        click.get_current_context().exit(1)


def submitted(ush: Ush, op: Operation, wait: bool, explain: Explain | None = None) -> None:
    """An accepted operation: wait for it (``--wait``) or print it (``--no-wait``)."""
    if wait:
        conclude(ush, op, explain)
    else:
        ush.out.submitted(op)


def planned(ush: Ush, plan: Plan) -> None:
    """Show a dry run's plan; exit 1 when nothing fits."""
    ush.out.plan(plan)
    if plan.error:
        raise Failure(plan.error)
