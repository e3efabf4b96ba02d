"""The invariants every fault scenario checks once the faults stop.

* no VM record lost: every VM id created and not destroyed still exists;
* no VM running twice: at most one node's hypervisor runs each VM (fake driver: its table
  in ``<node state dir>/**/fake-vms.json`` + journal; qemu: a live ``qemu.pid``);
* no simulated guest running on a live host without its disk lease (it could write the
  disk beside a copy another host starts);
* no operation stuck: every operation reaches a final status within a bound, and no VM
  stays in a transitional state;
* capacity accounting: per connected node, the specs of its running and paused VMs add up
  to the usage its LNM reports (within a heartbeat or two).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import Cluster, wait_for
from usher.model import FINAL_OP_STATUSES, TRANSITIONAL_STATES, VM, Operation, VMState
from usher.vmm.lease import frozen, host_alive, lease_holder

ACTIVE = frozenset({VMState.RUNNING, VMState.PAUSED})


def fake_table(node_dir: Path) -> dict[str, dict[str, Any]]:
    """The fake driver's VM table in a node's state dir (snapshot + journal), as it would
    load it; {} if there is none."""
    records: dict[str, dict[str, Any]] = {}
    for state in node_dir.rglob("fake-vms.json"):
        with contextlib.suppress(OSError, ValueError):  # mid-rewrite: the journal has it
            records.update({r["id"]: r for r in json.loads(state.read_text())["vms"]})
        journal = state.with_name("fake-vms.journal")
        if journal.exists():
            for line in journal.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line
                if "del" in entry:
                    records.pop(entry["del"], None)
                else:
                    records[entry["put"]["id"]] = entry["put"]
    return records


def running_copies(cluster: Cluster) -> Counter[str]:
    """How many nodes' hypervisors run (or hold paused) each VM id.

    A simulated guest counts while its node's table says it runs, unless another host holds
    the VM's disk lease now and this copy cannot write the disk: its host died (stopped
    renewing its leases past their ``ttl``), as a QEMU whose NFSv4 lease expired cannot
    (and when that host returns, the guest is ``error``), or it is the source of a migration
    whose target took the disk, as a QEMU source that sent all of its guest is inactive.
    Read under the leases' lock, so the tables and the leases are seen at one moment."""
    copies: Counter[str] = Counter()
    nodes_dir = cluster.root / "nodes"
    if not nodes_dir.exists():
        return copies
    for _dir, vm_id, _rec, _holds in _fake_copies(cluster, nodes_dir):
        copies[vm_id] += 1
    for node_dir in nodes_dir.iterdir():
        qemu_vms = node_dir / "qemu" / "vms"
        if qemu_vms.is_dir():
            for vm_dir in qemu_vms.iterdir():
                if cluster.guest_pid(node_dir.name, vm_dir.name) is not None:
                    copies[vm_dir.name] += 1
    return copies


def leaseless_copies(cluster: Cluster) -> list[str]:
    """Simulated guests that run on a live host without holding their disk lease: such a
    copy could write the disk beside one another host starts (each must be empty)."""
    nodes_dir = cluster.root / "nodes"
    if not nodes_dir.exists():
        return []
    return [
        f"{vm_id} on {node_dir.name} (lease held by {rec['_lease']})"
        for node_dir, vm_id, rec, holds in _fake_copies(cluster, nodes_dir)
        if not holds
    ]


def _fake_copies(cluster: Cluster, nodes_dir: Path) -> list[tuple[Path, str, dict[str, Any], bool]]:
    """Every simulated guest that counts as a running copy (see :func:`running_copies`):
    its node's dir, its id, its record (with ``_lease``: who holds its disk) and whether its
    host holds the disk lease.

    The tables are read before the leases' lock is taken and read again under it only if
    their files changed meanwhile: an LNM waits for that lock on every lease call, and a
    checker holding it for long would stall the LNMs it checks."""
    leases = cluster.storage / "leases"
    before = {node_dir: _read_table(node_dir) for node_dir in nodes_dir.iterdir()}
    found = []
    with _leases_still(leases):
        for node_dir, (files, seen, table) in before.items():
            if _signature(files) != seen:
                table = fake_table(node_dir)
            holder = os.path.realpath(node_dir / "fake")
            for vm_id, rec in table.items():
                if rec["state"] not in ("running", "paused"):
                    continue
                owner = lease_holder(leases, vm_id)
                holds = owner == holder
                if not holds and (rec.get("sent") or not host_alive(leases, holder)):
                    continue  # it sent its guest away, or it is a dead host's, to settle
                found.append((node_dir, vm_id, {**rec, "_lease": owner}, holds))
    return found


def _read_table(
    node_dir: Path,
) -> tuple[list[Path], tuple[tuple[int, int, int] | None, ...], dict[str, dict[str, Any]]]:
    files = [
        path
        for state in node_dir.rglob("fake-vms.json")
        for path in (state, state.with_name("fake-vms.journal"))
    ]
    seen = _signature(files)
    return files, seen, fake_table(node_dir)


def _signature(files: list[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a table file is written, appended to or replaced."""
    marks: list[tuple[int, int, int] | None] = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            marks.append(None)
            continue
        marks.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(marks)


@contextlib.contextmanager
def _leases_still(leases: Path) -> Iterator[None]:
    if not leases.is_dir():
        yield
        return
    with frozen(leases):
        yield


def all_operations(cluster: Cluster) -> list[Operation]:
    client = cluster.client()
    ops: list[Operation] = []
    cursor = None
    while True:
        page = client.list_operations(limit=1000, cursor=cursor)
        ops += page.items
        cursor = page.next
        if not cursor:
            return ops


def wait_ops_final(cluster: Cluster, bound: float = 30.0) -> list[Operation]:
    """Every operation final within ``bound`` seconds; returns them all."""

    def check() -> list[Operation] | None:
        ops = all_operations(cluster)
        return ops if all(op.status in FINAL_OP_STATUSES for op in ops) else None

    try:
        return wait_for("every operation to be final", check, timeout=bound, every=0.25)
    except AssertionError:
        stuck = [o for o in all_operations(cluster) if o.status not in FINAL_OP_STATUSES]
        vms = {vm.id: vm for vm in cluster.vms()}
        nodes = {n.name: n.connected for n in cluster.client().nodes()}
        seen = [
            f"{o.id} {o.kind.value} {o.status.value} progress={o.result.get('progress')} "
            f"errors={o.result.get('errors')} VMs: "
            + ", ".join(
                f"{vms[t].name} {vms[t].state.value} on {vms[t].node} "
                f"(connected={nodes.get(vms[t].node or '')}, target={vms[t].target_node})"
                if t in vms
                else f"{t} (no record)"
                for t in o.targets
            )
            for o in stuck
        ]
        raise AssertionError(f"operations stuck after {bound} s: {seen}") from None


def check_capacity(cluster: Cluster, bound: float = 6.0) -> None:
    """Per connected node, the reported usage equals the specs of its active VMs."""

    def mismatches() -> list[str]:
        vms = cluster.vms()
        bad = []
        for node in cluster.client().nodes():
            if not node.connected:
                continue
            mine = [vm for vm in vms if vm.node == node.name and vm.state in ACTIVE]
            want = (sum(vm.spec.vcpus for vm in mine), sum(vm.spec.memory_mb for vm in mine))
            got = (node.usage.vcpus, node.usage.memory_mb)
            if want != got:
                held = {
                    vm_id: rec["state"]
                    for vm_id, rec in fake_table(cluster.root / "nodes" / node.name).items()
                }
                recorded = {
                    vm.id: f"{vm.state.value} ({vm.state_reason})"
                    for vm in vms
                    if vm.node == node.name
                }
                bad.append(
                    f"{node.name}: VMs say {want}, LNM says {got} (its driver holds {held}; "
                    f"records there: {recorded})"
                )
        return bad

    last: list[str] = []
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        last = mismatches()
        if not last:
            return
        time.sleep(0.25)
    raise AssertionError(f"capacity accounting wrong after {bound} s: {last}")


def check_invariants(
    cluster: Cluster,
    created: set[str],
    destroyed: set[str] = frozenset(),  # type: ignore[assignment]
    *,
    bound: float = 30.0,
) -> list[VM]:
    """Check the four invariants (waiting up to ``bound`` s for things to settle); returns
    the VMs. ``created`` are every VM id ever created, ``destroyed`` those whose destroy
    succeeded."""
    wait_ops_final(cluster, bound)

    def settled() -> tuple[list[VM]] | None:
        vms = cluster.vms()
        return None if any(vm.state in TRANSITIONAL_STATES for vm in vms) else (vms,)

    try:
        (vms,) = wait_for("no VM in a transitional state", settled, timeout=bound, every=0.25)
    except AssertionError:
        left = [(v.name, v.state.value) for v in cluster.vms() if v.state in TRANSITIONAL_STATES]
        raise AssertionError(f"VMs stuck in transitional states after {bound} s: {left}") from None

    ids = {vm.id for vm in vms}
    lost = (set(created) - set(destroyed)) - ids
    assert not lost, f"VM records lost: {sorted(lost)}"
    twice = {vm_id: n for vm_id, n in running_copies(cluster).items() if n > 1}
    assert not twice, f"VMs running on more than one node: {twice}"
    leaseless = leaseless_copies(cluster)
    assert not leaseless, f"VMs running without their disk lease: {leaseless}"
    # every VM the controller says runs is run by exactly one hypervisor
    copies = running_copies(cluster)
    for vm in vms:
        if vm.state in ACTIVE:
            assert copies[vm.id] == 1, f"{vm.name} is {vm.state} but runs {copies[vm.id]} times"
    check_capacity(cluster)
    return vms


def copies_seen(cluster: Cluster, vm_id: str) -> list[str]:
    """What each node's fake driver holds of ``vm_id`` and who holds its disk lease: for the
    message of a check that found two copies."""
    leases = cluster.storage / "leases"
    seen = [f"lease held by {lease_holder(leases, vm_id)}"]
    for node_dir in sorted((cluster.root / "nodes").iterdir()):
        record = fake_table(node_dir).get(vm_id)
        if record is not None:
            holder = os.path.realpath(node_dir / "fake")
            alive = host_alive(leases, holder)
            seen.append(f"{node_dir.name} ({holder}, alive={alive}): {record}")
    return seen


def fake_running(cluster: Cluster, node: str, vm_id: str) -> bool:
    """Whether the fake driver of ``node`` holds ``vm_id`` running or paused."""
    record = fake_table(cluster.root / "nodes" / node).get(vm_id)
    return record is not None and record["state"] in ("running", "paused")
