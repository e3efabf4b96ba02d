"""Usher's shared vocabulary: the models that the controller, LNMs, plugins and clients exchange.

Everything that crosses a process boundary (REST API, LNM link, plugin hooks, client library)
is one of these pydantic models, so all parts agree on names and validation.
"""

from __future__ import annotations

import os
import random
import time
from enum import StrEnum
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from usher.bounds import (
    INT_MAX,
    MAX_DATA_DISKS,
    MAX_DISK_GB,
    MAX_REFS,
    MAX_TEXT,
    NAME_PATTERN,
    PRINCIPAL_PATTERN,
    check_data_disks,
    check_json,
    check_name,
    check_tags,
    check_text,
)

Ref = Annotated[str, Field(pattern=NAME_PATTERN)]
"""A reference to a VM (its id or name), a cluster, a node or an image."""
PrincipalName = Annotated[str, Field(pattern=PRINCIPAL_PATTERN)]
Text = Annotated[str, AfterValidator(check_text)]
"""Free text on one line (a description), bounded, without control characters."""
Kwargs = Annotated[dict[str, Any], AfterValidator(lambda v: check_json(v, "kwargs"))]
"""Free-form arguments for plugins and drivers: JSON that reads back identically."""
JSONObjects = Annotated[list[dict[str, Any]], AfterValidator(lambda v: check_json(v, "list"))]
Int64 = Annotated[int, Field(ge=0, le=INT_MAX)]
DiskGB = Annotated[int, Field(ge=1, le=MAX_DISK_GB)]
"""A disk's size in GiB (:data:`usher.bounds.MAX_DISK_GB` at most)."""
DataDisks = Annotated[
    list[dict[str, Any]],
    Field(max_length=MAX_DATA_DISKS),
    AfterValidator(check_data_disks),
]
"""A VM's data disks, in the order they are attached, each ``{"size_gb": N}``."""
VMName = Annotated[str, AfterValidator(lambda v: check_name(v, "VM name"))]
"""A VM's name: valid, and not shaped like an id."""
Tags = Annotated[list[str], AfterValidator(check_tags)]
"""A VM's tags: each valid and once, at most :data:`usher.bounds.MAX_TAGS`."""


# ids need to be unique, not secret (secrets come from ``secrets``): a generator seeded from
# the OS once costs no system call per id, as os.urandom did (several per VM started)
_ids = random.Random(os.urandom(32))


def new_id(prefix: str) -> str:
    """A short unique id with a readable prefix, e.g. ``vm-3f9a0c1b2d4e``."""
    return f"{prefix}-{_ids.getrandbits(48):012x}"


def now() -> float:
    """Wall-clock time in seconds since the epoch; every timestamp in Usher uses it."""
    return time.time()


LEASE_HELD = "disk lease held"
"""How a driver's error begins when a VM could not start because another host's copy holds
its disk (a start or an HA restart meeting it fails, and may be tried again later)."""


class VMState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    MIGRATING = "migrating"
    ERROR = "error"
    LOST = "lost"


TRANSITIONAL_STATES = frozenset(
    {VMState.PENDING, VMState.STARTING, VMState.STOPPING, VMState.MIGRATING}
)


class NodeState(StrEnum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"


class OpKind(StrEnum):
    """What an operation does. ``start`` creates new VMs, or boots stopped ones given by id."""

    START = "start"
    STOP = "stop"
    DESTROY = "destroy"
    PAUSE = "pause"
    RESUME = "resume"
    REBOOT = "reboot"
    CYCLE = "cycle"
    MIGRATE = "migrate"
    SNAPSHOT = "snapshot"
    """Snapshot all of a VM's disks (``kwargs.snapshot`` names it)."""
    SNAPSHOT_REVERT = "snapshot_revert"
    """Put a stopped VM's disks back as a snapshot holds them."""
    SNAPSHOT_DELETE = "snapshot_delete"
    CLONE = "clone"
    """Create a VM whose disks are a copy of another's (stopped, or one of its snapshots)."""
    IMAGE_FROM_VM = "image_from_vm"
    """Publish a VM's root disk (stopped, or a snapshot) as a catalogue image."""
    RESIZE = "resize"
    """Change one VM's vCPUs and memory (stopped) and grow its disks (``ResizeVM``)."""


OPERATION_KWARGS: dict[OpKind, frozenset[str]] = {
    OpKind.SNAPSHOT: frozenset({"snapshot", "snapshot_bytes"}),
    OpKind.SNAPSHOT_REVERT: frozenset({"snapshot"}),
    OpKind.SNAPSHOT_DELETE: frozenset({"snapshot"}),
    OpKind.IMAGE_FROM_VM: frozenset({"image_name", "snapshot"}),
    OpKind.RESIZE: frozenset({"resize"}),
}
"""The kwargs the core itself puts into the request of an operation of each kind (the
parameters of its own route, such as the snapshot's name), over whatever a caller passed
under those keys: a kwargs filter leaves them alone."""


class Capability(StrEnum):
    """What a VMM driver can do beyond start, stop and destroy: each node declares its
    driver's set, and the controller refuses an operation a node's driver cannot do."""

    PAUSE = "pause"
    """``pause`` and ``resume``."""
    REBOOT = "reboot"
    LIVE_MIGRATE = "live_migrate"
    """``prepare_incoming``, ``migrate``, ``finish_incoming``, ``abort_incoming`` and
    ``settle_incoming``."""
    CONSOLE = "console"
    """``console_log`` and ``console_end``: the serial console's output."""
    CONSOLE_INPUT = "console_input"
    """``console_write``: typing into the serial console (``ush console --attach``)."""
    SNAPSHOT = "snapshot"
    """``snapshot_create``, ``snapshot_list``, ``snapshot_revert``, ``snapshot_delete``, and
    copies of a VM's disks: ``clone_disks`` and ``export_disk``."""
    RESIZE_DISK = "resize_disk"
    """``resize_disk``: a VM's disks grow, stopped or running."""


class OpStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    VETOED = "vetoed"
    CANCELLED = "cancelled"


FINAL_OP_STATUSES = frozenset(
    {OpStatus.SUCCEEDED, OpStatus.FAILED, OpStatus.VETOED, OpStatus.CANCELLED}
)


class Strict(BaseModel):
    """Base for request bodies: unknown fields are an error, not silently dropped, and no
    float is infinite or NaN."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MAX_VCPUS = 512
MIN_MEMORY_MB, MAX_MEMORY_MB = 16, 4 * 1024 * 1024
"""The most vCPUs and the least and most memory (MiB) one VM may have."""


class VMSpec(Strict):
    """What a VM is made of. ``kwargs`` are free-form arguments for plugins and drivers."""

    vcpus: int = Field(1, ge=1, le=MAX_VCPUS)
    memory_mb: int = Field(256, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    image: Ref = "tiny"
    disk_gb: DiskGB | None = Field(
        None, description="the root disk's size in GiB (None: its image's own size)"
    )
    disks: DataDisks = Field(
        default_factory=list,
        description='data disks, each {"size_gb": N}: data1.qcow2, data2.qcow2, … in order',
    )
    nics: JSONObjects = Field(default_factory=list)
    kwargs: Kwargs = Field(default_factory=dict)

    def disk_sizes(self) -> list[int | None]:
        """Every disk's size in GiB, the root disk's first (None: its image's own size)."""
        return [self.disk_gb, *(int(disk["size_gb"]) for disk in self.disks)]

    def disks_asked_gb(self) -> int:
        """The GiB of disk asked for (what quotas count): the root disk's size when one was
        asked (a root disk of its image's own size is the site's image and counts 0), and
        every data disk's."""
        return sum(size or 0 for size in self.disk_sizes())

    def with_disk_size(self, disk: int, size_gb: int) -> VMSpec:
        """This spec with disk ``disk`` (0: the root disk; N: data disk N) of ``size_gb``
        GiB; raises ``IndexError`` for a disk it does not have."""
        if not 0 <= disk <= len(self.disks):
            raise IndexError(
                f"the VM has no disk {disk} (0 is its root disk; it has {len(self.disks)} "
                "data disks, numbered from 1)"
            )
        if disk == 0:
            return self.model_copy(update={"disk_gb": size_gb})
        disks = [dict(d) for d in self.disks]
        disks[disk - 1] = {"size_gb": size_gb}
        return self.model_copy(update={"disks": disks})


class Snapshot(BaseModel):
    """A snapshot of all of a VM's disks (never its cloud-init seed), as its node reported
    it when it was taken."""

    name: Ref
    created_at: float = Field(default_factory=now)
    size_bytes: Int64 = Field(
        0,
        description="the guest data it holds: what the VM's disks had allocated when it was "
        "taken (at most what deleting it frees); quotas count it",
    )
    running: bool = Field(False, description="taken while the VM ran (crash-consistent)")


class VM(BaseModel):
    id: str
    name: str
    owner: str
    cluster: str | None = None
    spec: VMSpec
    node: str | None = None
    target_node: str | None = Field(
        None, description="the node a migration moves it to, until the move is settled"
    )
    state: VMState = VMState.PENDING
    desired_state: VMState = Field(
        VMState.RUNNING,
        description="the state its users last asked for (running after a start, reboot, "
        "cycle or resume; stopped after a stop; paused after a pause), whether or not the "
        "action got it there",
    )
    state_reason: str | None = None
    addresses: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list, description="labels its users chose")
    snapshots: list[Snapshot] = Field(
        default_factory=list, description="its snapshots, oldest first, as its node reported"
    )
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class Capacity(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    vcpus: int = Field(0, ge=0, le=1 << 20)
    memory_mb: int = Field(0, ge=0, le=1 << 40)
    disk_gb: int = Field(0, ge=0, le=1 << 40)


class Usage(BaseModel):
    """A node's usage: what its VMs reserve and what they actually consume."""

    model_config = ConfigDict(allow_inf_nan=False)

    vcpus: Int64 = 0
    memory_mb: Int64 = 0
    vms: Int64 = 0
    cpu_percent: float = Field(0.0, ge=0)
    memory_used_mb: Int64 = 0
    per_vm: dict[Ref, dict[Annotated[str, Field(max_length=40)], float]] = Field(
        default_factory=dict, max_length=100_000
    )


class Node(BaseModel):
    name: str
    driver: str = "fake"
    capacity: Capacity = Field(default_factory=Capacity)
    labels: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    state: NodeState = NodeState.DOWN
    drained: bool = False
    maintenance: bool = False
    connected: bool = False
    last_heartbeat: float | None = None
    usage: Usage = Field(default_factory=Usage)
    joined_at: float = Field(default_factory=now)


class Principal(BaseModel):
    """Who asks: the result of authentication."""

    name: str
    roles: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def _new_names(names: list[str] | None) -> list[str] | None:
    """New VMs' names: valid, none like an id, each once."""
    if names is None:
        return None
    if not names:
        raise ValueError("names, when given, must not be empty")
    for name in names:
        check_name(name, "VM name")
    if len(set(names)) != len(names):
        raise ValueError("names must be unique")
    return names


class CreateVMs(Strict):
    """Body of ``POST /v1/vms``: start ``count`` new VMs (or one per entry of ``names``)."""

    count: int = Field(1, ge=1, le=MAX_REFS)
    names: Annotated[list[str] | None, AfterValidator(_new_names)] = Field(
        None, max_length=MAX_REFS
    )
    name_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,50}$")
    cluster: Ref | None = None
    vcpus: int = Field(1, ge=1, le=MAX_VCPUS)
    memory_mb: int = Field(256, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    image: Ref = "tiny"
    disk_gb: DiskGB | None = Field(
        None, description="each VM's root disk in GiB (None: its image's own size)"
    )
    disks: DataDisks = Field(
        default_factory=list, description='data disks of each VM, each {"size_gb": N}'
    )
    node: Ref | None = None
    tags: Tags = Field(default_factory=list, description="tags of every new VM")
    kwargs: Kwargs = Field(default_factory=dict)


class VMChange(Strict):
    """Body of ``PATCH /v1/vms/{vm}``: a new name, and tags set, added or removed (``tags``
    replaces them all; ``add_tags`` and ``remove_tags`` change them one by one)."""

    name: VMName | None = Field(None, description="its new name (unique, not like an id)")
    tags: Tags | None = None
    add_tags: Tags = Field(default_factory=list)
    remove_tags: Tags = Field(default_factory=list)

    def tags_of(self, vm: VM) -> list[str]:
        """``vm``'s tags after this change."""
        tags = self.tags if self.tags is not None else vm.tags
        gone = set(self.remove_tags)
        return check_tags([tag for tag in [*tags, *self.add_tags] if tag not in gone])


class VMAction(Strict):
    """Body of ``POST /v1/vms/actions/{kind}``: the targets are ids/names, a cluster, or both."""

    vms: list[Ref] = Field(default_factory=list, max_length=MAX_REFS)
    cluster: Ref | None = None
    target_node: Ref | None = None
    kwargs: Kwargs = Field(default_factory=dict)
    strict: bool = Field(
        False,
        description="refuse the whole action if any VM is not in a state it starts from "
        "(otherwise VMs already where it leads are skipped, and those that cannot take it "
        "fail while the rest go on)",
    )


class DiskGrowth(Strict):
    """One disk of a resize: disk ``disk`` (0: the root disk; N: data disk N) grows by
    ``grow_gb`` GiB. Disks never shrink."""

    disk: int = Field(0, ge=0, le=MAX_DATA_DISKS)
    grow_gb: DiskGB


def _one_growth_a_disk(disks: list[DiskGrowth]) -> list[DiskGrowth]:
    named = [growth.disk for growth in disks]
    if len(set(named)) != len(named):
        raise ValueError("name each disk at most once")
    return disks


class ResizeVM(Strict):
    """Body of ``POST /v1/vms/{vm}/resize``: new vCPUs and memory (the VM stopped), and disks
    that grow (stopped, running or paused). Whatever is left out stays as it is."""

    vcpus: int | None = Field(None, ge=1, le=MAX_VCPUS)
    memory_mb: int | None = Field(None, ge=MIN_MEMORY_MB, le=MAX_MEMORY_MB)
    disks: Annotated[list[DiskGrowth], AfterValidator(_one_growth_a_disk)] = Field(
        default_factory=list, max_length=MAX_DATA_DISKS + 1
    )
    kwargs: Kwargs = Field(default_factory=dict)


def _not_a_number(name: str) -> str:
    if name.isdigit():
        raise ValueError("a snapshot's name is not all digits (qemu-img reads those as ids)")
    return name


SnapshotName = Annotated[str, Field(pattern=NAME_PATTERN), AfterValidator(_not_a_number)]
"""A new snapshot's name: a name, not all digits (``qemu-img snapshot -a 1`` would take the
snapshot whose id is 1, whatever its name)."""


class SnapshotCreate(Strict):
    """Body of ``POST /v1/vms/{vm}/snapshots``: snapshot all of the VM's disks as ``name``."""

    name: SnapshotName
    kwargs: Kwargs = Field(default_factory=dict)


class CloneVM(Strict):
    """Body of ``POST /v1/vms/{vm}/clone``: a new VM ``name`` whose disks are a copy of the
    VM's (stopped), or of its ``snapshot`` (any state); it is admitted as a create would be
    (names, quotas, placement) and boots."""

    name: VMName
    snapshot: Ref | None = None
    node: Ref | None = None
    kwargs: Kwargs = Field(default_factory=dict)


class ImageFromVM(Strict):
    """Body of ``POST /v1/vms/{vm}/image``: publish the VM's root disk (stopped), or its
    ``snapshot``'s, flattened, as the catalogue image ``name``."""

    name: Ref
    snapshot: Ref | None = None
    description: Text = ""
    kwargs: Kwargs = Field(default_factory=dict)


class OpRequest(BaseModel):
    """An operation as plugins see it in ``request`` and ``<op>_request`` hooks.

    Request hooks may change the fields in :data:`REQUEST_HOOKS_MAY_CHANGE` in place (the
    spec, the kwargs, the node asked for, the migration's target), which are checked again
    afterwards as the caller's were, or veto the request by raising
    :class:`usher.hookspecs.Veto`. A hook that changes any other field (which VMs, how many,
    the cluster, who asks) fails, and the request is refused: what was authorized is what
    runs.
    """

    kind: OpKind
    principal: Principal
    client_address: str | None = None
    vm_ids: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(
        default_factory=list,
        description="VMs named that are already where the action leads: left alone",
    )
    refused: list[str] = Field(
        default_factory=list,
        description="VMs named in a state the action cannot start from: they fail",
    )
    count: int = Field(0, description="how many new VMs a start creates (0: none)")
    names: list[str] = Field(default_factory=list)
    cluster: str | None = None
    spec: VMSpec | None = None
    node: str | None = None
    target_node: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = Field(False, description="only planning: nothing will be changed")


REQUEST_HOOKS_MAY_CHANGE = frozenset({"spec", "kwargs", "node", "target_node"})
"""The fields of an :class:`OpRequest` a request hook may change."""


class Operation(BaseModel):
    id: str
    kind: OpKind
    principal: str
    targets: list[str] = Field(default_factory=list)
    status: OpStatus = OpStatus.QUEUED
    error: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_OP_STATUSES


class ApiToken(BaseModel):
    """An API token as the controller keeps it: everything but its secret (kept only as a
    digest)."""

    id: str
    principal: str
    roles: list[str]
    description: str = ""
    created_at: float
    expires_at: float | None = None
    revoked: bool = False

    @property
    def state(self) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at < now():
            return "expired"
        return "active"


class Event(BaseModel):
    id: str = Field(default_factory=lambda: new_id("ev"))
    name: str
    time: float = Field(default_factory=now)
    principal: str | None = None
    vm_id: str | None = None
    node: str | None = None
    operation_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing; pass ``next`` back as ``cursor`` for the following page."""

    items: list[T]
    total: int
    next: str | None = None


class Scope(BaseModel):
    """What a principal may see in listings: VMs it owns, or of clusters it belongs to."""

    owners: list[str] = Field(default_factory=list)
    clusters: list[str] = Field(default_factory=list)
    principals: list[str] = Field(
        default_factory=list, description="operations and events asked for by these"
    )


class Placement(BaseModel):
    """The scheduler's answer: a node per VM, or the reason nothing fits.

    ``rejected`` tells, for every node not chosen, which filter rejected it and why: that is
    what ``--dry-run`` prints.
    """

    nodes: list[str] = Field(default_factory=list)
    rejected: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


class ImageKind(StrEnum):
    """``kernel``: direct kernel boot (kernel + initrd files, plus a base disk);
    ``disk``: a bootable qcow2 disk."""

    KERNEL = "kernel"
    DISK = "disk"


class Image(BaseModel):
    """A guest image in the shared storage directory, as its ``image.json`` manifest says.

    ``files`` maps a role (``kernel``, ``initrd``, ``disk``) to a path relative to the image's
    own directory ``<storage>/images/<name>/``; every LNM of a cluster sees the same storage.
    """

    name: Ref
    kind: ImageKind
    files: dict[str, str]
    size_bytes: int = 0
    cmdline: str | None = None
    cloud_init: bool = Field(
        False, description="its guests run cloud-init: each VM gets a NoCloud seed"
    )
    description: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    created_at: float = Field(default_factory=now)


class ConsoleChunk(BaseModel):
    """Serial console output of a VM from ``offset``; ask for ``next`` to follow it."""

    vm_id: str
    offset: int
    next: int
    data: str


class SSHAccess(BaseModel):
    """Where and as whom the caller logs into a VM's guest with SSH (``ush ssh``)."""

    vm_id: str
    user: str = Field(description="the caller's account in the guest")
    host: str
    port: int
    via: str = Field(description="``address`` (the VM's own) or ``forward`` (a node's port)")


class PlannedVM(BaseModel):
    name: str
    node: str | None = None
    vm_id: str | None = None


class Plan(BaseModel):
    """A dry run's answer: where each VM would go, why every other node was not chosen, or
    why nothing fits. Nothing was changed."""

    vms: list[PlannedVM] = Field(default_factory=list)
    rejected: dict[str, str] = Field(default_factory=dict)
    error: str | None = None


class ErrorBody(BaseModel):
    """Every error the API returns has this shape."""

    error: str
    detail: Any | None = None
