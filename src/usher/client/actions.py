"""The VM actions, written once for both clients (see :mod:`usher.client.protocol`).

:func:`action` asks for any kind of action; the named ones only pick the kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from usher.client.call import Call, name_list, request_body
from usher.client.errors import UsherError
from usher.model import Operation, OpKind, Plan, VMAction


def action(
    kind: OpKind | str,
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    target_node: str | None = None,
    kwargs: dict[str, Any] | None = None,
    strict: bool = False,
) -> Call[Operation]:
    """Ask for ``kind`` on VMs (ids or names) and/or every VM of ``cluster``. VMs already
    where ``kind`` leads are skipped, and those that cannot take it fail while the others
    go on; ``strict`` refuses the whole request instead (409) if any VM cannot take it."""
    try:
        kind = OpKind(kind)
    except ValueError:
        known = ", ".join(OpKind)
        raise UsherError(400, f"unknown action {kind!r}; use one of {known}") from None
    body = request_body(
        VMAction,
        vms=name_list(vms),
        cluster=cluster,
        target_node=target_node,
        kwargs=kwargs or {},
        strict=strict,
    )
    if not strict:
        del body["strict"]  # the server's default: a request as older servers know it
    return Call("POST", f"/vms/actions/{kind.value}", Operation.model_validate, body=body)


def plan_migrate(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    target_node: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Plan]:
    """Dry run of :meth:`migrate`: where each VM would go; nothing changes."""
    call = action(OpKind.MIGRATE, vms, cluster, target_node, kwargs)
    return Call("POST", "/vms/actions/migrate/plan", Plan.model_validate, body=call.body)


def start_existing(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Boot stopped VMs (to create new ones, use ``create_vms``)."""
    return action(OpKind.START, vms, cluster, kwargs=kwargs)


def stop(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Power VMs off (gracefully first)."""
    return action(OpKind.STOP, vms, cluster, kwargs=kwargs)


def destroy(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Power VMs off and remove them and their disks."""
    return action(OpKind.DESTROY, vms, cluster, kwargs=kwargs)


def pause(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Freeze running VMs in memory."""
    return action(OpKind.PAUSE, vms, cluster, kwargs=kwargs)


def resume(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Let paused VMs run again."""
    return action(OpKind.RESUME, vms, cluster, kwargs=kwargs)


def reboot(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Reset running VMs' guests (a warm reboot)."""
    return action(OpKind.REBOOT, vms, cluster, kwargs=kwargs)


def cycle(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Stop and start again (a cold reboot)."""
    return action(OpKind.CYCLE, vms, cluster, kwargs=kwargs)


def migrate(
    vms: Sequence[str] | None = None,
    cluster: str | None = None,
    target_node: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Call[Operation]:
    """Move VMs to ``target_node``, or to nodes the scheduler picks."""
    return action(OpKind.MIGRATE, vms, cluster, target_node, kwargs)
