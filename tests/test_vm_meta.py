"""What the controller keeps with a VM on its node (``Guest.meta``): its bounds, records a
driver wrote before drivers kept it (they load with ``{}``), and the record the controller
makes again from a node's report after a restore, which refuses what a confused or hostile
node might claim."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from usher.ctrl.engine.adoption import NotAdoptable, adopted_vm, meta_of
from usher.model import VM, Image, VMSpec, VMState
from usher.vmm.base import META_LIMITS, DomainInfo, Guest
from usher.vmm.fake_domain import FakeDomain
from usher.vmm.libvirt_xml import Record
from usher.vmm.qemu_domain import Domain

SPEC = VMSpec(nics=[{"mac": "52:54:00:0d:15:0b", "network": "bridge:br0", "address": "10.0.0.11"}])


def test_meta_is_bounded() -> None:
    keys, key_len, value_len = META_LIMITS
    Guest(id="vm-1", name="a", spec=SPEC, meta={f"k{i}": "v" * value_len for i in range(keys)})
    for meta in (
        {f"k{i}": "v" for i in range(keys + 1)},
        {"k" * (key_len + 1): "v"},
        {"": "v"},
        {"k": "v" * (value_len + 1)},
    ):
        with pytest.raises(ValidationError, match="meta"):
            Guest(id="vm-1", name="a", spec=SPEC, meta=meta)


def test_driver_records_without_meta_load_with_none() -> None:
    fake = FakeDomain("vm-1", "a", SPEC).to_json()
    del fake["meta"]
    assert FakeDomain.from_json(fake).meta == {}
    image = Image(name="tiny", kind="disk", files={"disk": "disk.qcow2"})
    qemu = Domain(id="vm-1", name="a", spec=SPEC, image=image, nics=[], accel="tcg").record()
    del qemu["meta"]
    assert Domain.from_record(qemu).meta == {}
    libvirt = json.loads(Record(id="vm-1", name="a", spec=SPEC, image=image, nics=[]).to_json())
    del libvirt["meta"]
    assert Record.from_json(json.dumps(libvirt)).meta == {}
    kept = Record(id="vm-1", name="a", spec=SPEC, image=image, nics=[], meta={"owner": "bob"})
    assert Record.from_json(kept.to_json()).meta == {"owner": "bob"}


def _vm() -> VM:
    return VM(
        id="vm-0123456789ab",
        name="late",
        owner="alice",
        cluster="web",
        spec=SPEC,
        node="node-2",
        state=VMState.STOPPED,
        desired_state=VMState.STOPPED,
        tags=["a:1", "b"],
        created_at=1_700_000_000.25,
    )


def _report(vm: VM, **meta: str) -> dict[str, Any]:
    info = DomainInfo(id=vm.id, name=vm.name, spec=vm.spec, state=VMState.RUNNING)
    return {**info.model_dump(mode="json"), "meta": {**meta_of(vm), **meta}}


def test_a_record_comes_back_from_its_nodes_report() -> None:
    vm = _vm()
    got = adopted_vm(_report(vm), "node-7")
    same = ("id", "name", "owner", "cluster", "spec", "desired_state", "tags", "created_at")
    assert {k: getattr(got, k) for k in same} == {k: getattr(vm, k) for k in same}
    assert (got.node, got.state, got.addresses) == ("node-7", VMState.RUNNING, ["10.0.0.11"])
    assert "cluster" not in meta_of(vm.model_copy(update={"cluster": None}))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"meta": {}}, "keeps no owner"),
        ({"meta": {"cluster": "web"}}, "keeps no owner"),
        ({"owner": "bad owner!"}, "no principal's name"),
        ({"tags": '{"a": 1}'}, "not a list of strings"),
        ({"tags": "not json"}, "does not make a record"),
        ({"tags": '["bad tag"]'}, "does not make a record"),
        ({"created_at": "nan"}, "is not a time"),
        ({"desired": "exploded"}, "does not make a record"),
        ({"cluster": "../etc"}, "invalid cluster"),
        ({"name": "vm-0123456789ab"}, "invalid VM name"),
        ({"spec": {"vcpus": 0}}, "does not fit"),
        ({"id": "x" * 300}, "does not fit"),
    ],
)
def test_what_a_node_may_claim_is_checked(change: dict[str, Any], why: str) -> None:
    report = _report(_vm())
    for key, value in change.items():
        if key in ("meta", "name", "spec", "id"):
            report[key] = value
        else:
            report["meta"] = {**report["meta"], key: value}
    with pytest.raises(NotAdoptable, match=why):
        adopted_vm(report, "node-7")
