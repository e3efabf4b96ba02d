"""The fake VMM driver: state machine, capacity, persistence, migration, latency and faults."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from usher.model import VMSpec, VMState
from usher.vmm import fake
from usher.vmm.base import (
    Capability,
    DriverError,
    Guest,
    InsufficientCapacity,
    InvalidTransition,
    UnknownVM,
    load_driver,
)
from usher.vmm.fake import FakeDriver


def guest(vm_id: str = "vm-1", vcpus: int = 1, memory_mb: int = 256) -> Guest:
    return Guest(id=vm_id, name=f"name-{vm_id}", spec=VMSpec(vcpus=vcpus, memory_mb=memory_mb))


async def state_of(driver: FakeDriver, vm_id: str = "vm-1") -> VMState:
    return (await driver.info(vm_id)).state


async def receive(target: FakeDriver, incoming: Guest | None = None) -> Guest:
    """Migrate a VM from a fresh source to ``target`` without finishing it there: it is
    then a received incoming VM (``migrating``) on ``target``."""
    incoming = incoming or guest()
    source = FakeDriver()
    await source.start(incoming)
    uri = await target.prepare_incoming(incoming, "127.0.0.1")
    await source.migrate(incoming.id, uri, timeout=5)
    return incoming


async def ready_target(vm: Guest | None = None) -> tuple[FakeDriver, str]:
    """A target driver listening for ``vm`` (vm-1 by default), and its URI."""
    target = FakeDriver()
    return target, await target.prepare_incoming(vm or guest(), "127.0.0.1")


def test_load_driver_builds_fake_with_every_capability() -> None:
    driver = load_driver("fake", options={"vcpus": 8})
    assert isinstance(driver, FakeDriver)
    assert driver.name == "fake"
    assert driver.capabilities == frozenset(Capability)
    assert driver.capacity().vcpus == 8


async def test_start_new_vm_runs_and_is_listed() -> None:
    driver = FakeDriver()
    dom = await driver.start(guest())
    assert dom.state is VMState.RUNNING
    assert [d.id for d in await driver.list()] == ["vm-1"]
    assert (await driver.info("vm-1")).name == "name-vm-1"


# the state machine -------------------------------------------------------------------------


async def _setup(driver: FakeDriver, state: VMState) -> None:
    if state is VMState.MIGRATING:
        await receive(driver)
        return
    await driver.start(guest())
    if state is VMState.PAUSED:
        await driver.pause("vm-1")
    elif state is VMState.STOPPED:
        await driver.stop("vm-1")
    elif state is VMState.ERROR:
        await driver.crash("vm-1", "boom")
    assert await state_of(driver) is state


async def _do(driver: FakeDriver, action: str) -> None:
    if action in ("start", "cycle"):
        await getattr(driver, action)(guest())
    elif action == "migrate":
        _target, uri = await ready_target()
        await driver.migrate("vm-1", uri, timeout=5)
    else:
        await getattr(driver, action)("vm-1")


STATES = [VMState.RUNNING, VMState.PAUSED, VMState.STOPPED, VMState.ERROR, VMState.MIGRATING]
OPS = ["start", "stop", "pause", "resume", "reboot", "cycle", "migrate", "finish_incoming"]
GONE = None
VALID: dict[tuple[VMState, str], VMState | None] = {
    (VMState.RUNNING, "stop"): VMState.STOPPED,
    (VMState.RUNNING, "pause"): VMState.PAUSED,
    (VMState.RUNNING, "reboot"): VMState.RUNNING,
    (VMState.RUNNING, "cycle"): VMState.RUNNING,
    (VMState.RUNNING, "migrate"): GONE,
    (VMState.PAUSED, "stop"): VMState.STOPPED,
    (VMState.PAUSED, "resume"): VMState.RUNNING,
    (VMState.PAUSED, "cycle"): VMState.RUNNING,
    (VMState.PAUSED, "migrate"): GONE,
    (VMState.STOPPED, "start"): VMState.RUNNING,
    (VMState.STOPPED, "cycle"): VMState.RUNNING,
    (VMState.ERROR, "start"): VMState.RUNNING,
    (VMState.ERROR, "cycle"): VMState.RUNNING,
    (VMState.MIGRATING, "finish_incoming"): VMState.RUNNING,
}


@pytest.mark.parametrize("action", OPS)
@pytest.mark.parametrize("state", STATES)
async def test_state_machine(state: VMState, action: str) -> None:
    driver = FakeDriver()
    await _setup(driver, state)
    if (state, action) not in VALID:
        with pytest.raises(InvalidTransition) as excinfo:
            await _do(driver, action)
        assert excinfo.value.state is state
        assert await state_of(driver) is state
        return
    await _do(driver, action)
    expected = VALID[(state, action)]
    if expected is GONE:
        assert await driver.list() == []
    else:
        assert await state_of(driver) is expected


@pytest.mark.parametrize("action", [*OPS, "info", "console_log", "crash"])
async def test_unknown_vm(action: str) -> None:
    driver = FakeDriver()
    await driver.start(guest("vm-other"))
    if action == "start":  # starting an unknown VM creates it
        await _do(driver, action)
        assert await state_of(driver) is VMState.RUNNING
        return
    with pytest.raises(UnknownVM):
        await _do(driver, action)


async def test_destroy_removes_and_is_idempotent() -> None:
    driver = FakeDriver()
    await driver.start(guest(vcpus=2))
    await driver.destroy("vm-1")
    assert await driver.list() == []
    assert driver.reserved().vcpus == 0
    await driver.destroy("vm-1")
    await driver.destroy("never-existed")
    # destroy works from every state
    for state in STATES:
        await _setup(driver, state)
        await driver.destroy("vm-1")
        assert await driver.list() == []
        assert driver.reserved().vcpus == 0


async def test_start_updates_spec_of_stopped_vm() -> None:
    driver = FakeDriver()
    await driver.start(guest(vcpus=1))
    await driver.stop("vm-1")
    dom = await driver.start(guest(vcpus=4))
    assert dom.spec.vcpus == 4
    assert driver.reserved().vcpus == 4


# capacity ----------------------------------------------------------------------------------


async def test_capacity_is_enforced_and_released_by_stop() -> None:
    driver = FakeDriver(options={"vcpus": 4, "memory_mb": 4096})
    await driver.start(guest("a", vcpus=2, memory_mb=1024))
    await driver.start(guest("b", vcpus=2, memory_mb=1024))
    assert driver.reserved().vcpus == 4
    assert driver.reserved().memory_mb == 2048
    with pytest.raises(InsufficientCapacity, match=r"needs 1 vCPUs .* only 0 vCPUs"):
        await driver.start(guest("c"))
    assert {d.id for d in await driver.list()} == {"a", "b"}

    await driver.pause("a")  # paused still holds its resources
    with pytest.raises(InsufficientCapacity):
        await driver.start(guest("c"))
    await driver.stop("a")
    assert driver.reserved().vcpus == 2
    await driver.start(guest("c", vcpus=2))
    assert driver.reserved().vcpus == 4
    # restarting the stopped VM no longer fits
    with pytest.raises(InsufficientCapacity):
        await driver.start(guest("a", vcpus=2, memory_mb=1024))
    assert await state_of(driver, "a") is VMState.STOPPED


async def test_memory_is_enforced_too() -> None:
    driver = FakeDriver(options={"vcpus": 64, "memory_mb": 1000})
    await driver.start(guest("a", memory_mb=600))
    with pytest.raises(InsufficientCapacity, match=r"needs 1 vCPUs and 600 MB.*400 MB are free"):
        await driver.start(guest("b", memory_mb=600))


async def test_concurrent_starts_do_not_overbook() -> None:
    driver = FakeDriver(options={"vcpus": 2, "latency": 0.02})
    results = await asyncio.gather(
        *(driver.start(guest(f"vm-{i}")) for i in range(3)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], InsufficientCapacity)
    assert len(await driver.list()) == 2
    assert driver.reserved().vcpus == 2


async def test_crash_reports_error_and_frees_capacity() -> None:
    seen: list[tuple[str, VMState, str | None]] = []

    async def on_change(vm_id: str, state: VMState, reason: str | None) -> None:
        seen.append((vm_id, state, reason))

    driver = FakeDriver(on_state_change=on_change)
    await driver.start(guest(vcpus=3))
    await driver.crash("vm-1", "kernel panic")
    assert seen == [("vm-1", VMState.ERROR, "kernel panic")]
    dom = await driver.info("vm-1")
    assert (dom.state, dom.reason) == (VMState.ERROR, "kernel panic")
    assert driver.reserved().vcpus == 0


# usage and console -------------------------------------------------------------------------


async def test_cpu_time_grows_only_while_running(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(fake, "now", lambda: clock[0])
    driver = FakeDriver()
    await driver.start(guest(vcpus=2, memory_mb=1024))
    clock[0] += 10
    dom = await driver.info("vm-1")
    assert dom.cpu_seconds == pytest.approx(10 * fake.CPU_LOAD * 2)
    assert dom.memory_used_mb == pytest.approx(1024 * fake.MEMORY_LOAD)
    await driver.pause("vm-1")
    clock[0] += 100
    assert (await driver.info("vm-1")).cpu_seconds == pytest.approx(1.0)
    await driver.resume("vm-1")
    clock[0] += 10
    assert (await driver.info("vm-1")).cpu_seconds == pytest.approx(2.0)
    await driver.stop("vm-1")
    dom = await driver.info("vm-1")
    assert (dom.cpu_seconds, dom.memory_used_mb) == (pytest.approx(2.0), 0.0)


async def test_console_log_records_boot_and_state_changes() -> None:
    driver = FakeDriver()
    await driver.start(guest())
    first = await driver.console_log("vm-1")
    assert b"booting tiny" in first
    await driver.pause("vm-1")
    rest = await driver.console_log("vm-1", offset=len(first))
    assert rest == b"name-vm-1: paused\n"
    assert await driver.console_log("vm-1") == first + rest


# persistence -------------------------------------------------------------------------------


async def test_persistence_round_trip(tmp_path: Path) -> None:
    first = FakeDriver(state_dir=str(tmp_path), options={"vcpus": 8})
    await first.open()
    await first.start(guest("a", vcpus=2))
    await first.start(guest("b", vcpus=3))
    await first.start(guest("c"))
    await first.pause("b")
    await first.stop("c")
    await receive(first, guest("d"))
    before = {d.id: (d.state, d.spec) for d in await first.list()}
    console = await first.console_log("b")
    await first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake-vms.journal", "fake-vms.json"]
    assert (tmp_path / "fake-vms.journal").read_text() == ""  # folded into the table

    second = FakeDriver(state_dir=str(tmp_path), options={"vcpus": 8})
    await second.open()
    assert {d.id: (d.state, d.spec) for d in await second.list()} == before
    assert second.reserved().vcpus == 2 + 3 + 1
    assert await second.console_log("b") == console
    await second.resume("b")  # the loaded guests are fully usable
    await second.finish_incoming("d")
    await second.close()


async def test_every_change_survives_a_killed_lnm(tmp_path: Path) -> None:
    """No close(): what a driver answered is on disk, as if the LNM were killed -9 then."""
    driver = FakeDriver(state_dir=str(tmp_path))
    await driver.open()
    await driver.start(guest())
    await driver.start(guest("vm-2"))
    await driver.stop("vm-1")
    await driver.destroy("vm-2")
    with open(tmp_path / "fake-vms.journal", "a") as journal:
        journal.write('{"put": {"id": "half')  # a line cut short by the kill
    reborn = FakeDriver(state_dir=str(tmp_path))
    await reborn.open()
    assert [(d.id, d.state) for d in await reborn.list()] == [("vm-1", VMState.STOPPED)]
    await reborn.close()


async def test_journal_is_folded_into_the_table(tmp_path: Path) -> None:
    driver = FakeDriver(state_dir=str(tmp_path))
    await driver.open()
    for _ in range(fake.JOURNAL_MIN // 2 + 1):
        await driver.start(guest())
        await driver.stop("vm-1")
    lines = (tmp_path / "fake-vms.journal").read_text().count("\n")
    assert lines < fake.JOURNAL_MIN  # compacted along the way, not growing forever
    saved = json.loads((tmp_path / "fake-vms.json").read_text())
    assert [vm["id"] for vm in saved["vms"]] == ["vm-1"]
    await driver.close()


async def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "fake-vms.json").write_text("{not json")
    with pytest.raises(DriverError, match=r"fake-vms\.json"):
        await FakeDriver(state_dir=str(tmp_path)).open()


# migration ---------------------------------------------------------------------------------


async def test_migration_moves_vm_and_capacity() -> None:
    source, target = FakeDriver(), FakeDriver(options={"vcpus": 4})
    await source.start(guest(vcpus=4))
    uri = await target.prepare_incoming(guest(vcpus=4), "127.0.0.1")
    assert re.fullmatch(r"fake://127\.0\.0\.1:\d+/vm-1\?to=[0-9a-f]{16}", uri), uri
    assert await state_of(target) is VMState.MIGRATING
    assert target.reserved().vcpus == 4
    with pytest.raises(InsufficientCapacity):
        await target.start(guest("other"))

    result = await source.migrate("vm-1", uri, timeout=5)
    assert result.total_ms >= 0
    assert result.transferred_bytes == 256 * fake.MEMORY_LOAD * 1024 * 1024
    assert await source.list() == []
    assert source.reserved().vcpus == 0

    dom = await target.finish_incoming("vm-1")
    assert dom.state is VMState.RUNNING
    assert target.reserved().vcpus == 4


async def test_prepare_incoming_checks_capacity_and_duplicates() -> None:
    target = FakeDriver(options={"vcpus": 2})
    with pytest.raises(InsufficientCapacity):
        await target.prepare_incoming(guest(vcpus=3), "host")
    assert await target.list() == []
    await target.start(guest())
    with pytest.raises(DriverError, match="already on this host"):
        await target.prepare_incoming(guest(), "host")


async def test_abort_incoming_releases_and_is_idempotent() -> None:
    target = FakeDriver()
    await target.prepare_incoming(guest(vcpus=2), "host")
    await target.abort_incoming("vm-1")
    assert await target.list() == []
    assert target.reserved().vcpus == 0
    await target.abort_incoming("vm-1")
    await target.start(guest())  # abort never drops a VM that runs here
    with pytest.raises(InvalidTransition):
        await target.abort_incoming("vm-1")
    assert await state_of(target) is VMState.RUNNING


@pytest.mark.parametrize(
    "uri",
    [
        "not a uri",
        "fake://host:1/other-vm",
        "tcp://host:1/vm-1",
        "fake:///vm-1",
        "fake://[::1/x",
        "fake://host/vm-1",
        "fake://host:99999/vm-1",
    ],
)
async def test_migrate_to_malformed_uri_leaves_vm_running(uri: str) -> None:
    source = FakeDriver()
    await source.start(guest())
    with pytest.raises(DriverError, match="cannot migrate"):
        await source.migrate("vm-1", uri, timeout=5)
    assert await state_of(source) is VMState.RUNNING
    assert source.reserved().vcpus == 1


async def test_migrate_timeout_leaves_vm_running() -> None:
    source = FakeDriver(options={"latency": {"migrate": 5}})
    await source.start(guest())
    target, uri = await ready_target()
    with pytest.raises(DriverError, match="timed out"):
        await source.migrate("vm-1", uri, timeout=0.05)
    assert await state_of(source) is VMState.RUNNING
    with pytest.raises(DriverError, match="not complete"):
        await target.finish_incoming("vm-1")


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_target_gone_mid_migration_leaves_vm_running(how: str) -> None:
    """The target aborts or its process ends while the source sends: as with QEMU, the
    source's migration fails at once and the VM runs on there."""
    source = FakeDriver(options={"latency": {"migrate": 5}})
    await source.start(guest())
    target, uri = await ready_target()
    sending = asyncio.ensure_future(source.migrate("vm-1", uri, timeout=10))
    await asyncio.sleep(0.2)
    began = time.monotonic()
    await (target.abort_incoming("vm-1") if how == "abort" else target.close())
    with pytest.raises(DriverError, match="closed the connection"):
        await sending
    assert time.monotonic() - began < 1
    assert await state_of(source) is VMState.RUNNING
    assert source.reserved().vcpus == 1


async def test_unreachable_target_leaves_vm_running() -> None:
    source = FakeDriver()
    await source.start(guest())
    target, uri = await ready_target()
    await target.abort_incoming("vm-1")  # nothing listens there any more
    with pytest.raises(DriverError, match="cannot reach"):
        await source.migrate("vm-1", uri, timeout=5)
    assert await state_of(source) is VMState.RUNNING


async def test_settle_incoming_runs_a_received_vm_and_drops_the_rest() -> None:
    target = FakeDriver()
    await receive(target, guest("arrived"))
    await target.prepare_incoming(guest("halfway"), "127.0.0.1")
    assert (await target.settle_incoming("arrived")).state is VMState.RUNNING
    assert await target.settle_incoming("halfway") is None
    assert [d.id for d in await target.list()] == ["arrived"]
    assert target.reserved().vcpus == 1
    with pytest.raises(InvalidTransition):
        await target.settle_incoming("arrived")  # runs here: nothing to settle


# latency and fault injection ---------------------------------------------------------------


async def test_latency_for_every_action() -> None:
    driver = FakeDriver(options={"latency": 0.05})
    began = time.monotonic()
    await driver.start(guest())
    assert time.monotonic() - began >= 0.045
    began = time.monotonic()
    await driver.stop("vm-1")
    assert time.monotonic() - began >= 0.045


async def test_latency_per_action() -> None:
    driver = FakeDriver(options={"latency": {"stop": 0.1}})
    began = time.monotonic()
    await driver.start(guest())
    assert time.monotonic() - began < 0.05
    began = time.monotonic()
    await driver.stop("vm-1")
    assert time.monotonic() - began >= 0.095


@pytest.mark.parametrize(
    "options",
    [{"latency": {"boot": 1}}, {"fail": {"start": 1.5}}, {"fail": {"teleport": 0.1}}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(DriverError):
        FakeDriver(options=options)


async def test_certain_failure_leaves_state_unchanged() -> None:
    driver = FakeDriver(options={"fail": {"start": 1.0, "pause": 1.0, "migrate": 1.0}})
    with pytest.raises(DriverError, match="simulated failure"):
        await driver.start(guest())
    assert await driver.list() == []
    assert driver.reserved().vcpus == 0

    ok = FakeDriver(options={"fail": {"pause": 1.0, "migrate": 1.0, "destroy": 1.0}})
    await ok.start(guest())
    with pytest.raises(DriverError, match="simulated failure"):
        await ok.pause("vm-1")
    target, uri = await ready_target()
    with pytest.raises(DriverError, match="simulated failure"):
        await ok.migrate("vm-1", uri, timeout=5)
    assert await state_of(target) is VMState.MIGRATING  # it never got the VM
    with pytest.raises(DriverError, match="simulated failure"):
        await ok.destroy("vm-1")
    assert await state_of(ok) is VMState.RUNNING
    assert ok.reserved().vcpus == 1


async def _outcomes(seed: int) -> list[bool]:
    driver = FakeDriver(options={"fail": {"start": 0.5}, "seed": seed})
    outcomes = []
    for i in range(40):
        try:
            await driver.start(guest(f"vm-{i}"))
            outcomes.append(True)
        except DriverError:
            outcomes.append(False)
    return outcomes


async def test_failure_probability_is_seedable() -> None:
    outcomes = await _outcomes(7)
    assert outcomes == await _outcomes(7)
    assert 5 < sum(outcomes) < 35


# scale -------------------------------------------------------------------------------------


async def test_ten_thousand_starts_are_cheap(tmp_path: Path) -> None:
    driver = FakeDriver(
        state_dir=str(tmp_path), options={"vcpus": 10_000, "memory_mb": 10_000 * 256}
    )
    await driver.open()
    began = time.monotonic()
    for i in range(10_000):
        await driver.start(guest(f"vm-{i}"))
    assert len(await driver.list()) == 10_000
    await driver.close()
    assert time.monotonic() - began < 10
    assert driver.reserved().vcpus == 10_000
    saved = json.loads((tmp_path / "fake-vms.json").read_text())
    assert len(saved["vms"]) == 10_000
