"""hypothesis state machines: the fake driver against a model of the VM state machine and of
the host's capacity (in-process, two drivers for migration), and the controller's API against
a small real cluster (its VM states follow the allowed transitions)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from harness import Cluster
from usher.client import UsherError
from usher.model import OpStatus, VMSpec, VMState
from usher.vmm.base import Guest, InsufficientCapacity, InvalidTransition, UnknownVM
from usher.vmm.fake import FakeDriver

S = VMState
HOST_VCPUS, HOST_MEMORY = 4, 2048
SPECS = st.sampled_from([(1, 256), (2, 512), (1, 1024), (3, 256)])
HOLDS = {S.RUNNING, S.PAUSED}

# the model: which states each action accepts, and the state after it
ACCEPTS = {
    "start": {S.STOPPED, S.ERROR},
    "stop": {S.RUNNING, S.PAUSED},
    "pause": {S.RUNNING},
    "resume": {S.PAUSED},
    "reboot": {S.RUNNING},
    "migrate": {S.RUNNING, S.PAUSED},
}
AFTER = {
    "start": S.RUNNING,
    "stop": S.STOPPED,
    "pause": S.PAUSED,
    "resume": S.RUNNING,
    "reboot": S.RUNNING,
}


class FakeDriverMachine(RuleBasedStateMachine):
    """Two fake hosts; the model holds (host, state, spec) per VM."""

    vms = Bundle("vms")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.mkdtemp(prefix="usher-sm-")
        self.hosts = [self._driver(i) for i in range(2)]
        self.model: dict[str, tuple[int, VMState, VMSpec]] = {}
        self.counter = 0

    def _driver(self, i: int) -> FakeDriver:
        driver = FakeDriver(
            state_dir=str(Path(self.tmp) / f"h{i}"),
            options={"vcpus": HOST_VCPUS, "memory_mb": HOST_MEMORY},
        )
        self.run(driver.open())
        return driver

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        for driver in self.hosts:
            self.run(driver.close())
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def used(self, host: int) -> tuple[int, int]:
        specs = [spec for h, state, spec in self.model.values() if h == host and state in HOLDS]
        return sum(s.vcpus for s in specs), sum(s.memory_mb for s in specs)

    def fits(self, host: int, spec: VMSpec) -> bool:
        vcpus, memory = self.used(host)
        return vcpus + spec.vcpus <= HOST_VCPUS and memory + spec.memory_mb <= HOST_MEMORY

    @rule(target=vms, host=st.integers(0, 1), spec=SPECS)
    def create(self, host: int, spec: tuple[int, int]) -> str:
        self.counter += 1
        vm_id = f"vm-{self.counter}"
        vspec = VMSpec(vcpus=spec[0], memory_mb=spec[1])
        guest = Guest(id=vm_id, name=f"n{self.counter}", spec=vspec)
        if self.fits(host, vspec):
            info = self.run(self.hosts[host].start(guest))
            assert info.state == S.RUNNING
            self.model[vm_id] = (host, S.RUNNING, vspec)
        else:
            with pytest.raises(InsufficientCapacity):
                self.run(self.hosts[host].start(guest))
        return vm_id

    @rule(vm=vms, action=st.sampled_from(["start", "stop", "pause", "resume", "reboot"]))
    def act(self, vm: str, action: str) -> None:
        if vm not in self.model:
            driver = self.hosts[0]
            if action == "start":
                return  # a start of an unknown VM is a create (see ``create``)
            with pytest.raises(UnknownVM):
                self.run(getattr(driver, action)(vm))
            return
        host, state, spec = self.model[vm]
        driver = self.hosts[host]
        if action == "start":
            call = driver.start(Guest(id=vm, name=vm, spec=spec))
        else:
            call = getattr(driver, action)(vm)
        if state not in ACCEPTS[action]:
            with pytest.raises(InvalidTransition):
                self.run(call)
        elif action == "start" and not self.fits(host, spec):
            with pytest.raises(InsufficientCapacity):
                self.run(call)
        else:
            self.run(call)
            self.model[vm] = (host, AFTER[action], spec)

    @rule(vm=consumes(vms))
    def destroy(self, vm: str) -> None:
        host = self.model[vm][0] if vm in self.model else 0
        self.run(self.hosts[host].destroy(vm))  # idempotent: gone VMs destroy fine
        self.model.pop(vm, None)

    @rule(vm=vms)
    def migrate(self, vm: str) -> None:
        if vm not in self.model:
            return
        host, state, spec = self.model[vm]
        src, dst = self.hosts[host], self.hosts[1 - host]
        guest = Guest(id=vm, name=vm, spec=spec)
        if state not in ACCEPTS["migrate"]:
            with pytest.raises(InvalidTransition):
                self.run(src.migrate(vm, "fake://x/" + vm, timeout=5))
            return
        if not self.fits(1 - host, spec):
            with pytest.raises(InsufficientCapacity):
                self.run(dst.prepare_incoming(guest, "127.0.0.1"))
            return
        uri = self.run(dst.prepare_incoming(guest, "127.0.0.1"))
        assert self.run(dst.info(vm)).state == S.MIGRATING
        self.run(src.migrate(vm, uri, timeout=5))
        info = self.run(dst.finish_incoming(vm))
        assert info.state == S.RUNNING
        self.model[vm] = (1 - host, S.RUNNING, spec)

    @rule(host=st.integers(0, 1))
    def restart_host(self, host: int) -> None:
        """The LNM restarts: a new driver on the same state dir finds the same guests."""
        self.run(self.hosts[host].close())
        self.hosts[host] = self._driver(host)

    @rule(vm=vms)
    def crash(self, vm: str) -> None:
        if vm not in self.model or self.model[vm][1] not in HOLDS:
            return
        host, _, spec = self.model[vm]
        self.run(self.hosts[host].crash(vm))
        self.model[vm] = (host, S.ERROR, spec)

    @invariant()
    def driver_matches_model(self) -> None:
        for i, driver in enumerate(self.hosts):
            seen = {d.id: d.state for d in self.run(driver.list())}
            want = {vm: state for vm, (h, state, _) in self.model.items() if h == i}
            assert seen == want, (i, seen, want)
            reserved = driver.reserved()
            assert (reserved.vcpus, reserved.memory_mb) == self.used(i)
            assert reserved.vcpus <= HOST_VCPUS and reserved.memory_mb <= HOST_MEMORY

    @invariant()
    def never_on_two_hosts(self) -> None:
        ids = [d.id for driver in self.hosts for d in self.run(driver.list())]
        assert len(ids) == len(set(ids))


TestFakeDriverMachine = FakeDriverMachine.TestCase
TestFakeDriverMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, database=None
)


# --- the controller's API against a real cluster ----------------------------------------

# what the API may show after an operation of each kind ended, from the state before it
API_ALLOWED = {
    "start": {S.RUNNING},
    "stop": {S.STOPPED},
    "pause": {S.PAUSED},
    "resume": {S.RUNNING},
    "reboot": {S.RUNNING},
    "cycle": {S.RUNNING},
    "migrate": {S.RUNNING, S.PAUSED},
}
API_ACCEPTS = {
    "start": {S.STOPPED, S.ERROR, S.LOST},
    "stop": {S.RUNNING, S.PAUSED, S.ERROR},
    "pause": {S.RUNNING},
    "resume": {S.PAUSED},
    "reboot": {S.RUNNING},
    "cycle": {S.RUNNING, S.PAUSED, S.STOPPED, S.ERROR, S.LOST},
    "migrate": {S.RUNNING, S.PAUSED},
}
STEADY = {S.RUNNING, S.PAUSED, S.STOPPED, S.ERROR, S.LOST}
API_ALREADY = {"start": S.RUNNING, "stop": S.STOPPED, "pause": S.PAUSED, "resume": S.RUNNING}
"""A VM already in the state an action leads to is skipped (the action succeeds)."""


@pytest.fixture(scope="module")
def api_cluster(tmp_path_factory: pytest.TempPathFactory):
    cluster = Cluster(tmp_path_factory.mktemp("sm"), None)
    cluster.add_blank_image()
    cluster.start_ctrl()
    cluster.start_lnm("node-1", vcpus=4, memory_mb=2048, wait=False)
    cluster.start_lnm("node-2", vcpus=4, memory_mb=2048, wait=False)
    cluster.wait_node("node-1", connected=True)
    cluster.wait_node("node-2", connected=True)
    yield cluster
    cluster.stop()


@pytest.mark.timeout(600)
def test_api_state_machine(api_cluster: Cluster) -> None:
    cluster = api_cluster
    client = cluster.client()
    steps = {"n": 0}

    class ApiMachine(RuleBasedStateMachine):
        vms = Bundle("api_vms")

        @initialize()
        def clean(self) -> None:
            left = [vm.id for vm in cluster.vms()]
            if left:
                assert cluster.run(client.destroy(left)).status == OpStatus.SUCCEEDED
            self.model: dict[str, VMState] = {}

        @precondition(lambda self: len(self.model) < 4)
        @rule(target=vms, vcpus=st.integers(1, 2))
        def create(self, vcpus: int) -> str:
            op = cluster.run(client.create_vms(count=1, vcpus=vcpus, memory_mb=256))
            vm = op.targets[0]
            if op.status == OpStatus.SUCCEEDED:
                assert client.get_vm(vm).state == S.RUNNING
            self.model[vm] = client.get_vm(vm).state
            steps["n"] += 1
            return vm

        @rule(vm=vms, kind=st.sampled_from(sorted(API_ALLOWED)))
        def act(self, vm: str, kind: str) -> None:
            if vm not in self.model:
                return
            before = self.model[vm]
            steps["n"] += 1
            try:
                op = cluster.run(client.action(kind, [vm]))
            except UsherError as exc:
                assert exc.status == 409, exc
                # a migration is placed before it is answered: one with nowhere to go is
                # refused as a whole, whatever the VM's state
                placed = kind == "migrate" and "nothing was changed" in str(exc)
                assert placed or before not in API_ACCEPTS[kind], (kind, before, str(exc))
                assert before != API_ALREADY.get(kind), (kind, before, str(exc))
                assert client.get_vm(vm).state == before
                return
            after = client.get_vm(vm).state
            if op.status == OpStatus.SUCCEEDED and before == API_ALREADY.get(kind):
                assert after == before and op.result["skipped"], (kind, before, op.result)
            elif op.status == OpStatus.SUCCEEDED:
                assert before in API_ACCEPTS[kind], (kind, before)
                assert after in API_ALLOWED[kind], (kind, before, after)
            else:
                assert op.status == OpStatus.FAILED and op.error
                assert before not in API_ACCEPTS[kind] or after in STEADY, (kind, before, after)
            self.model[vm] = after

        @rule(vm=consumes(vms))
        def destroy(self, vm: str) -> None:
            if vm not in self.model:
                return
            steps["n"] += 1
            assert cluster.run(client.destroy([vm])).status == OpStatus.SUCCEEDED
            del self.model[vm]
            with pytest.raises(UsherError) as exc:
                client.get_vm(vm)
            assert exc.value.status == 404

        @invariant()
        def api_matches_model(self) -> None:
            if not hasattr(self, "model"):
                return
            states = {vm.id: vm.state for vm in cluster.vms()}
            assert states == self.model
            assert set(states.values()) <= STEADY

    run = ApiMachine.TestCase
    run.settings = settings(
        max_examples=6,
        stateful_step_count=15,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    run("runTest").runTest()
    print(f"API state machine: {steps['n']} steps")
    assert steps["n"] > 0
