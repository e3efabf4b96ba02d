"""Every event Usher's core and built-in plugins emit: its name, and the model of its ``data``.

An event (:class:`usher.model.Event`) has ``id``, ``name``, ``time`` and ``data``; events that
concern a principal, a VM, a node or an operation also set ``principal``, ``vm_id``, ``node``
or ``operation_id`` (the model's ``sets`` says which may be set). :data:`EVENTS` maps each
name to the model of its ``data`` and :func:`validate_event` checks an event against it. The
tests check that the core emits no undeclared event and that what it emits fits its model;
nothing is checked in production. A plugin's own events are its own: give them names that
cannot be mistaken for these.

Each operation kind (:class:`~usher.model.OpKind`) gives three events: ``<op>_request``
(with ``request``), ``<op>`` (one VM's step succeeded) and ``<op>_failure``.
"""

from __future__ import annotations

from pydantic import BaseModel

from usher.event_types import builtin_plugins as plugins
from usher.event_types import core
from usher.event_types.payload import ENVELOPE, Payload
from usher.model import Event, OpKind

__all__ = ["ENVELOPE", "EVENTS", "STEP_DONE", "Payload", "UndeclaredEvent", "validate_event"]


class UndeclaredEvent(LookupError):
    """An event whose name :data:`EVENTS` does not declare."""


STEP_DONE: dict[OpKind, type[Payload]] = {
    OpKind.START: core.Moved,
    OpKind.CYCLE: core.Moved,
    OpKind.MIGRATE: core.Migrated,
    OpKind.SNAPSHOT: core.SnapshotDone,
    OpKind.SNAPSHOT_REVERT: core.SnapshotDone,
    OpKind.SNAPSHOT_DELETE: core.SnapshotDone,
    OpKind.CLONE: core.Cloned,
    OpKind.IMAGE_FROM_VM: core.ImageFromVMDone,
    OpKind.RESIZE: core.Resized,
}
"""The payload of a step that succeeded, by operation kind (the others:
:class:`~usher.event_types.core.StepDone`)."""

EVENTS: dict[str, type[BaseModel]] = {
    "ctrl_start": core.CtrlStart,
    "record_quarantined": core.RecordQuarantined,
    "plugin_error": core.PluginError,
    "node_join": core.NodeJoin,
    "node_capacity": core.NodeCapacity,
    "node_lost": core.NodeLost,
    "node_state": core.NodeStateChange,
    "usage": core.UsageReport,
    "node_revoked": core.NodeRevoked,
    "node_refused": core.NodeRefused,
    "image_import": core.ImageImport,
    "image_delete": core.ImageDelete,
    "request": core.RequestData,
    **{f"{kind.value}_request": core.RequestData for kind in OpKind},
    "request_refused": core.RequestRefused,
    "cancel": core.Cancel,
    "register": core.Register,
    **{kind.value: STEP_DONE.get(kind, core.StepDone) for kind in OpKind},
    **{f"{kind.value}_failure": core.OpFailure for kind in OpKind},
    "state_change": core.StateChange,
    "unregister": core.Unregister,
    "vm_change": core.VMChangeData,
    "unknown_vm": core.UnknownVM,
    "vm_adopted": core.VMAdopted,
    "incoming_settled": core.IncomingSettled,
    "fenced": core.Fenced,
    "fence_failure": core.FenceFailure,
    "console_attach": core.ConsoleAttach,
    "console_detach": core.ConsoleDetach,
    "console_refused": core.ConsoleRefused,
    "token_create": plugins.TokenCreate,
    "token_revoke": plugins.TokenRevoke,
    "login": plugins.Login,
    "login_failure": plugins.LoginFailure,
    "user_set": plugins.UserChange,
    "user_delete": plugins.UserChange,
    "key_add": plugins.KeyChange,
    "key_remove": plugins.KeyChange,
    "cluster_create": plugins.ClusterCreate,
    "cluster_member_add": plugins.ClusterMember,
    "cluster_member_remove": plugins.ClusterMember,
    "ldap_failure": plugins.LdapFailure,
    "ha_protect": plugins.HAProtect,
    "ha_unprotect": plugins.HAProtect,
    "ha_restart": plugins.HARestart,
    "ha_failure": plugins.HAFailure,
    "script_failure": plugins.ScriptFailure,
    "webhook_failure": plugins.WebhookFailure,
    "dns_failure": plugins.DnsFailure,
    "ipam_conflict": plugins.IpamConflict,
}
"""Every event name, with the model of its ``data``."""


def validate_event(event: Event) -> BaseModel:
    """``event``'s ``data`` as its declared model. Raises :class:`UndeclaredEvent` for a name not in
    :data:`EVENTS`, ``ValueError`` if the event sets a field its model does not name in ``sets``,
    and pydantic's ``ValidationError`` if ``data`` does not fit."""
    model = EVENTS.get(event.name)
    if model is None:
        raise UndeclaredEvent(f"event {event.name!r} is not declared in usher.event_types")
    allowed = getattr(model, "sets", ())
    stray = [name for name in ENVELOPE if getattr(event, name) is not None and name not in allowed]
    if stray:
        raise ValueError(f"event {event.name!r} sets {', '.join(stray)}, which it does not declare")
    return model.model_validate(event.data)
