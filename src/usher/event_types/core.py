"""The payloads of the events the core emits (controller, nodes, operations, reconciliation)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field, create_model

from usher.event_types.payload import OP, Payload
from usher.model import Capacity, NodeState, OpKind, OpRequest, Usage, VMState

# --- the controller -------------------------------------------------------------------------


class CtrlStart(Payload):
    """The controller started (its plugins configured, its records recovered). Counted by
    ``metrics``; logged by ``eventlog``."""

    listen: str = Field(description="the address the API listens on")
    plugins: list[str] = Field(description="the enabled plugins, in order")


class RecordQuarantined(Payload):
    """At start, a row that did not read back (an older release's) was moved to the ``quarantine``
    table. For an operator to look at."""

    table: str
    key: str
    error: str


class PluginError(Payload):
    """A plugin's notification hook failed or timed out on an event (published by the plugin host).
    For an operator; other plugins see it too."""

    plugin: str
    hook: str
    error: str
    event: str = Field(description="the name of the event the hook failed on")


# --- nodes ----------------------------------------------------------------------------------


class NodeJoin(Payload):
    """An LNM dialled and was accepted (first time or again). ``ha`` drops the restarts it planned
    for VMs of that node; the dashboard refreshes its nodes."""

    sets = ("node",)
    driver: str
    capacity: Capacity
    labels: dict[str, str]


class NodeCapacity(Payload):
    """A node claimed more capacity than the site allows (it was cut to ``capacity``), or its
    capacity changed since it last joined."""

    sets = ("node",)
    claimed: Capacity = Field(description="what the node said it has")
    capacity: Capacity = Field(description="what it is now recorded with")
    before: Capacity | None = Field(description="what it was recorded with (None: new node)")
    cap: Capacity = Field(description="the most the site allows it")


class NodeLost(Payload):
    """A node's link dropped, its heartbeats stopped, or it did not come back after a controller
    restart. The engine marks its VMs ``lost``; ``ha`` restarts the protected ones elsewhere;
    ``metrics`` counts link losses."""

    sets = ("node",)
    reason: str


class NodeStateChange(Payload):
    """A node was drained, put in maintenance, or activated."""

    sets = ("node",)
    state: NodeState


class UsageReport(Usage):
    """A node's usage, from a heartbeat (at most one event per node every few seconds). The
    dashboard charts it; ``eventlog`` skips it by default."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sets: ClassVar[tuple[str, ...]] = ("node",)


class NodeRevoked(Payload):
    """An admin revoked a node's credential (its link is closed)."""

    sets = ("principal", "node")


class NodeRefused(Payload):
    """An LNM was refused (a bad credential, a malformed hello, …); at most ten a minute per
    address. For an operator."""

    sets = ("node",)
    reason: str
    address: str


# --- images ---------------------------------------------------------------------------------


class ImageImport(Payload):
    """An image was imported into the catalogue."""

    sets = ("principal",)
    name: str
    size_bytes: int


class ImageDelete(Payload):
    """An image was deleted from the catalogue."""

    sets = ("principal",)
    name: str


# --- requests -------------------------------------------------------------------------------


class _Request(Payload):
    """The base of :data:`RequestData` (whose fields are those of the request)."""

    sets = ("principal", "operation_id")


_REQUEST_FIELDS: dict[str, Any] = {
    name: (field.annotation, field)
    for name, field in OpRequest.model_fields.items()
    if name != "principal"
}
RequestData: type[Payload] = create_model(
    "RequestData",
    __base__=_Request,
    __doc__="""A request passed its request hooks and became an operation (``request`` and its
    ``<op>_request`` fire, once each). The :class:`~usher.model.OpRequest` as the hooks left
    it, without its principal (that is the event's own). ``audit`` records it as accepted;
    ``scripts`` runs request scripts on these names *before* the operation.""",
    **_REQUEST_FIELDS,
)


class RequestRefused(Payload):
    """A request was refused before it became an operation (not allowed, unknown VM, wrong state, no
    capacity, a name taken). ``audit`` and ``metrics`` count it."""

    sets = ("principal",)
    kind: OpKind
    client_address: str | None
    request: dict[str, Any] = Field(description="the request's body as sent")
    status: int = Field(description="the HTTP status of the answer")
    error: str


class Cancel(Payload):
    """Someone asked to cancel an operation."""

    sets = ("principal", "operation_id")
    cancelled: list[str] = Field(
        default_factory=list, description="ids of the VMs whose steps were cancelled"
    )
    refused: dict[str, str] = Field(description="VM id: why its running step goes on")


# --- operations' steps ----------------------------------------------------------------------


class Register(Payload):
    """A start created a VM record (before its step runs). ``audit`` adds the VM to the request's
    targets."""

    sets = OP
    name: str
    cluster: str | None
    addresses: list[str]


class StepDone(Payload):
    """One VM's step of the operation succeeded, or it was already where the action leads
    (``skipped``). ``audit`` counts it; ``ipam`` frees a destroyed VM's address."""

    sets = OP
    skipped: str | None = Field(None, description="why the VM was left alone")


class Moved(Payload):
    """One VM's step succeeded; when the VM was first moved cold to another node (its own was down,
    or a target was given), from where to where. ``audit`` counts it."""

    sets = OP
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    cold: bool = False
    skipped: str | None = Field(None, description="why the VM was left alone")


class Migrated(Moved):
    """One VM's step succeeded (of a migration, or of a node's evacuation). A live migration gives
    its timings; a stopped VM moved cold gives ``cold``; a VM that left the evacuated node meanwhile
    gives ``skipped``. ``audit`` counts it."""

    uri: str | None = None
    total_ms: float | None = Field(None, description="all of it, as the user waited")
    migration_ms: float | None = Field(None, description="the hypervisor's transfer alone")
    downtime_ms: float | None = Field(None, description="the hypervisor's figure")
    paused_ms: float | None = Field(
        None,
        description="the guest's pause, from its stop on the source to its run on the target, "
        "as the two nodes' clocks stamped them (the qemu driver)",
    )
    transferred_bytes: int | None = None


class SnapshotDone(Payload):
    """A VM's snapshot was taken (``snapshot``), its disks reverted to one
    (``snapshot_revert``), or one deleted (``snapshot_delete``). ``audit`` counts it."""

    sets = OP
    snapshot: str
    size_bytes: int | None = Field(None, description="only when taken: the guest data it holds")


class Cloned(Moved):
    """A clone's new VM got a copy of its source's disks and booted. ``audit`` counts it."""

    source: str = Field(description="the id of the VM whose disks were copied")
    snapshot: str | None = Field(description="the snapshot copied; None: the disks as they were")


class ImageFromVMDone(Payload):
    """A VM's root disk (or a snapshot's) was published as a catalogue image."""

    sets = OP
    image: str
    snapshot: str | None
    size_bytes: int


class Resized(Payload):
    """One VM was resized: its spec's vCPUs, memory and disk sizes now (GiB; ``disk_gb`` None:
    its image's own size), as its node confirmed them. The dashboard updates the VM."""

    sets = OP
    vcpus: int
    memory_mb: int
    disk_gb: int | None
    disks: list[dict[str, int]] = Field(description='data disks, each {"size_gb": N}')


class OpFailure(Payload):
    """With ``vm_id``, one VM's step failed; without, the request was refused by a plugin
    (``vetoed``) or cut short by a restart, and nothing ran. ``audit`` records the outcome; ``ipam``
    frees the address of a VM whose start failed; ``metrics`` counts refusals."""

    sets = OP
    error: str
    vetoed: bool | None = Field(None, description="only without a VM: a plugin vetoed it")


class StateChange(Payload):
    """A VM changed state, or its node or migration target changed. ``ha`` restarts a protected VM
    that became ``lost``; the dashboard updates the VM."""

    sets = ("vm_id", "node", "operation_id")
    from_: VMState = Field(alias="from")
    to: VMState
    reason: str | None
    node: str | None = Field(None, description="only when it moved: its node now")
    target_node: str | None = Field(None, description="only when set or cleared")


class VMChangeData(Payload):
    """A VM was renamed or its tags changed (``PATCH /v1/vms/{vm}``). The dashboard updates
    the VM."""

    sets = ("vm_id", "node", "principal")
    name: str
    old_name: str | None = Field(description="only when it was renamed: its name before")
    tags: list[str]


class Unregister(Payload):
    """A VM's record was deleted (by ``destroy``, or after a restore: see ``reason``).
    ``ipam`` frees its address; the dashboard drops it."""

    sets = ("vm_id", "node", "operation_id")
    name: str
    cluster: str | None
    reason: str | None = Field(
        None,
        description="why a record was removed without a destroy: after a restore, the VM "
        "was destroyed since the backup (its node has no copy, its disks are gone)",
    )


# --- reconciliation -------------------------------------------------------------------------


class UnknownVM(Payload):
    """A node reports a VM that has no record and never had; it is left alone (after a restore,
    within its window, one with Usher's meta is adopted instead: ``vm_adopted``). ``data`` is
    the node's report. For an operator."""

    sets = ("vm_id", "node")
    id: str
    name: str = ""
    state: VMState
    reason: str | None = None
    not_adopted: str | None = Field(
        None, description="after a restore: why the VM was not adopted (no Usher meta, …)"
    )


class VMAdopted(Payload):
    """After a restore, a VM made since the backup, which its node reports with the meta the
    controller gave it (owner, cluster, tags, …), was recorded again from that report.
    ``ipam`` holds its address again (or fires ``ipam_conflict``), ``dns`` publishes it."""

    sets = ("vm_id", "node")
    name: str
    owner: str
    cluster: str | None
    state: VMState
    addresses: list[str]


class IncomingSettled(Payload):
    """An incoming migration that an interrupted operation left was run (``running``) or dropped
    (``dropped``) on its node."""

    sets = ("principal", "vm_id", "node")
    outcome: str | None = Field(description="``running`` or ``dropped``, as the node says")
    recorded_node: str | None


class Fenced(Payload):
    """A copy of a VM on a node its record does not name (stale, claimed by a confused or hostile
    node, or of a VM destroyed while its node was away) was killed there, its disks left alone; also
    a plugin's ``ctx.fence``."""

    sets = ("principal", "vm_id", "node")
    reason: str


class FenceFailure(Payload):
    """Such a copy could not be killed (the node refused or went away)."""

    sets = ("principal", "vm_id", "node")
    error: str
    recorded_node: str | None


# --- attached consoles ----------------------------------------------------------------------


class ConsoleAttach(Payload):
    """Someone attached to a VM's read-write serial console (``ush console --attach``, the
    dashboard). ``audit`` records it."""

    sets = ("principal", "vm_id", "node")
    session: str = Field(description="names the session in its ``console_detach``")
    client_address: str | None
    read_only: bool = Field(description="the VM's node takes no console input")


class ConsoleDetach(Payload):
    """An attached console ended. What was typed is never recorded, only how much."""

    sets = ("principal", "vm_id", "node")
    session: str
    seconds: float = Field(description="how long it was attached")
    bytes_typed: int = Field(description="bytes of input delivered to the VM")
    code: int = Field(description="the WebSocket close code: why it ended")
    reason: str


class ConsoleRefused(Payload):
    """An attach to a VM's console was refused: no such VM (or not visible), not allowed, no
    console there, too many attached. ``audit`` records it."""

    sets = ("principal",)
    vm: str = Field(description="the VM as the client named it")
    client_address: str | None
    code: int = Field(description="the WebSocket close code")
    error: str
