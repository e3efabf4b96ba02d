"""What the controller keeps with a VM on its node, and a VM record made again from it.

A node's driver keeps a small mapping with each VM (``Guest.meta``, reported back unchanged
in its ``DomainInfo``), as Nova keeps an instance's owner in its libvirt domain: who the VM
belongs to and what its record holds that its spec does not. After a restore
(:mod:`usher.ctrl.restore_window`) a VM made since the backup has no record; its node's
report of it, with this mapping, is enough to record it again (:func:`adopted_vm`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from usher.bounds import PRINCIPAL_RE, check_name, check_tags
from usher.model import VM, Ref, VMSpec, VMState

OWNER, CLUSTER, TAGS, DESIRED, CREATED = "owner", "cluster", "tags", "desired", "created_at"
MetaValue = Annotated[str, Field(max_length=4096)]


def meta_of(vm: VM) -> dict[str, str]:
    """What the node keeps with ``vm``: its owner, cluster, tags (JSON), desired state and
    creation time."""
    meta = {
        OWNER: vm.owner,
        TAGS: json.dumps(vm.tags, separators=(",", ":")),
        DESIRED: vm.desired_state.value,
        CREATED: repr(vm.created_at),
    }
    if vm.cluster is not None:
        meta[CLUSTER] = vm.cluster
    return meta


class Reported(BaseModel):
    """A VM as a node's ``info`` reports it, checked before anything of it is believed."""

    model_config = ConfigDict(allow_inf_nan=False)

    id: Ref
    name: str = Field(max_length=200)
    spec: VMSpec
    state: VMState
    reason: str | None = Field(None, max_length=2000)
    meta: dict[Annotated[str, Field(max_length=64)], MetaValue] = Field(
        default_factory=dict, max_length=16
    )


class NotAdoptable(ValueError):
    """A report that cannot become a record; the message says why."""


def adopted_vm(info: dict[str, Any], node: str) -> VM:
    """The record of the VM ``node`` reports as ``info`` (its driver's ``DomainInfo``), from
    its spec and the meta the controller gave it: its addresses are its NICs' ``address``.
    Raises :class:`NotAdoptable` for a report without Usher's meta or that does not fit."""
    try:
        reported = Reported.model_validate(info)
    except ValidationError as exc:
        raise NotAdoptable(f"its node's report does not fit: {exc}") from None
    meta = reported.meta
    if OWNER not in meta:
        raise NotAdoptable("its node keeps no owner with it (not started by Usher)")
    try:
        fields: dict[str, Any] = {
            "id": reported.id,
            "name": check_name(reported.name, "VM name"),
            "owner": meta[OWNER],
            "cluster": check_name(meta[CLUSTER], "cluster") if CLUSTER in meta else None,
            "spec": reported.spec,
            "node": node,
            "state": reported.state,
            "state_reason": f"adopted from node {node} after a restore",
            "desired_state": VMState(meta.get(DESIRED, VMState.RUNNING.value)),
            "addresses": [str(nic["address"]) for nic in reported.spec.nics if nic.get("address")],
        }
        tags = json.loads(meta.get(TAGS, "[]"))
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("its tags are not a list of strings")
        fields["tags"] = check_tags(tags)
        if not PRINCIPAL_RE.fullmatch(fields["owner"]):
            raise ValueError(f"owner {fields['owner'][:200]!r} is no principal's name")
        if CREATED in meta:
            created = float(meta[CREATED])
            if not math.isfinite(created):
                raise ValueError(f"created_at {meta[CREATED][:40]!r} is not a time")
            fields["created_at"] = created
        return VM.model_validate(fields)
    except (ValidationError, ValueError, TypeError) as exc:
        raise NotAdoptable(f"its meta does not make a record: {exc}") from None
