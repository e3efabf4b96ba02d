"""Conformance: every method called off, at each of the site's ``cancel_delays``: the
cancellation is re-raised, the VM is as it was or as the call would have left it, ``list()``
says which, and nothing the call claimed stays claimed (a probe guest of all the capacity
left fits afterwards). A method whose capability the driver lacks is checked to refuse."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from usher.conformance.hosts import Hosts, alive, declares, refused, states
from usher.conformance.site import DriverSite
from usher.images.catalog import staging_dir
from usher.model import Capability, VMState
from usher.vmm.base import Driver, DriverError, Guest

RESERVING = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING})


async def call_off(call: Awaitable[Any], delay: float) -> bool:
    """Call off ``call`` ``delay`` s after it began: True if it had finished by then (its
    error raised), False if the cancellation came back."""
    task = asyncio.ensure_future(call)
    await asyncio.sleep(delay)
    if task.done():
        task.result()
        return True
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return False
    raise AssertionError("the call swallowed its cancellation")


@dataclass
class Bench:
    """One guest (``guest``) on host ``here`` (``a`` at first), and host ``there`` (``b``),
    both with the site's slow options; what each case runs on."""

    hosts: Hosts
    here: Driver
    there: Driver
    guest: Guest
    notes: dict[str, Any] = field(default_factory=dict)
    here_name: str = "a"
    there_name: str = "b"
    """The names of the hosts ``here`` and ``there`` (for :meth:`listen`)."""

    @property
    def site(self) -> DriverSite:
        return self.hosts.site

    async def state(self, driver: Driver | None = None) -> VMState | None:
        await asyncio.sleep(self.site.settle_seconds)
        return (await states(driver or self.here)).get(self.guest.id)

    def listen(self) -> str:
        """The address incoming migrations to host ``there`` listen on."""
        return self.site.listen_host(self.there_name)

    async def ensure(self, want: VMState | None) -> None:
        """Bring the guest on host ``here`` to ``want`` (None: gone)."""
        driver, vm_id = self.here, self.guest.id
        now = (await states(driver)).get(vm_id)
        if now == want:
            return
        if want is None:
            await driver.destroy(vm_id)
            return
        if now is None:
            now = (await driver.start(self.guest)).state
        if now is VMState.PAUSED and want is VMState.RUNNING:
            await driver.resume(vm_id)
        elif want is VMState.STOPPED:
            await driver.stop(vm_id, hard=True)
        elif now in (VMState.STOPPED, VMState.ERROR):
            await driver.start(self.guest)
        if want is VMState.PAUSED:
            await driver.pause(vm_id)

    async def swap(self) -> None:
        """The guest moved to host ``there``: call that host ``here`` from now on."""
        self.here, self.there = self.there, self.here
        self.here_name, self.there_name = self.there_name, self.here_name


Case = Callable[[Bench, float], Awaitable[None]]
CASES: dict[str, tuple[Capability | None, Case]] = {}


def case(name: str, capability: Capability | None = None) -> Callable[[Case], Case]:
    def register(run: Case) -> Case:
        CASES[name] = (capability, run)
        return run

    return register


def one_of(found: VMState | None, *allowed: VMState | None) -> None:
    assert found in allowed, f"{found} is neither as it was nor as it would have been: {allowed}"


@case("start")
async def _start(bench: Bench, delay: float) -> None:
    await bench.ensure(None)
    done = await call_off(bench.here.start(bench.guest), delay)
    one_of(await bench.state(), VMState.RUNNING, *(() if done else (None,)))


async def _stopping(bench: Bench, delay: float, hard: bool) -> None:
    await bench.ensure(VMState.RUNNING)
    done = await call_off(bench.here.stop(bench.guest.id, hard=hard), delay)
    one_of(await bench.state(), VMState.STOPPED, *(() if done else (VMState.RUNNING,)))


@case("stop")
async def _stop(bench: Bench, delay: float) -> None:
    await _stopping(bench, delay, hard=False)


@case("stop(hard=True)")
async def _stop_hard(bench: Bench, delay: float) -> None:
    await _stopping(bench, delay, hard=True)


@case("destroy")
async def _destroy(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    done = await call_off(bench.here.destroy(bench.guest.id), delay)
    one_of(await bench.state(), None, *(() if done else (VMState.RUNNING,)))


@case("fence")
async def _fence(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    done = await call_off(bench.here.fence(bench.guest.id), delay)
    one_of(await bench.state(), None, *(() if done else (VMState.RUNNING,)))


@case("cycle")
async def _cycle(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await call_off(bench.here.cycle(bench.guest), delay)
    one_of(await bench.state(), VMState.RUNNING)


@case("pause", Capability.PAUSE)
async def _pause(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    done = await call_off(bench.here.pause(bench.guest.id), delay)
    one_of(await bench.state(), VMState.PAUSED, *(() if done else (VMState.RUNNING,)))


@case("resume", Capability.PAUSE)
async def _resume(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.PAUSED)
    done = await call_off(bench.here.resume(bench.guest.id), delay)
    one_of(await bench.state(), VMState.RUNNING, *(() if done else (VMState.PAUSED,)))


@case("reboot", Capability.REBOOT)
async def _reboot(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    # up first (its heartbeat rises): a reset in the middle of a boot tests the guest (a TCG
    # guest reset while it loads its kernel may hang), not the driver
    await alive(bench.site, bench.here, bench.guest.id, timeout=bench.site.boot_timeout)
    await call_off(bench.here.reboot(bench.guest.id), delay)
    one_of(await bench.state(), VMState.RUNNING)


@case("list")
async def _list(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await call_off(bench.here.list(), delay)
    await call_off(bench.here.info(bench.guest.id), delay)
    one_of(await bench.state(), VMState.RUNNING)


@case("console_log", Capability.CONSOLE)
async def _console_log(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await call_off(bench.here.console_log(bench.guest.id), delay)
    await call_off(bench.here.console_end(bench.guest.id), delay)
    one_of(await bench.state(), VMState.RUNNING)


@case("console_write", Capability.CONSOLE_INPUT)
async def _console_write(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await call_off(bench.here.console_write(bench.guest.id, b"echo called-off\n"), delay)
    one_of(await bench.state(), VMState.RUNNING)


@case("resize_disk", Capability.RESIZE_DISK)
async def _resize_disk(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    size = int((await bench.here.info(bench.guest.id)).spec.disks[0]["size_gb"])
    done = await call_off(bench.here.resize_disk(bench.guest.id, 1, size + 1), delay)
    info = await bench.here.info(bench.guest.id)
    assert info.state is VMState.RUNNING
    grown = [{"size_gb": size + 1}]
    assert info.spec.disks == grown if done else info.spec.disks in (grown, [{"size_gb": size}])
    bench.guest = bench.guest.model_copy(update={"spec": info.spec})


async def _names(bench: Bench) -> list[str]:
    return [snap.name for snap in await bench.here.snapshot_list(bench.guest.id)]


@case("snapshot_create", Capability.SNAPSHOT)
async def _snapshot_create(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    name = f"s{len(bench.notes)}"
    bench.notes[name] = True
    before = await _names(bench)
    done = await call_off(bench.here.snapshot_create(bench.guest.id, name), delay)
    after = await _names(bench)
    assert after == [*before, name] if done else after in (before, [*before, name])
    one_of(await bench.state(), VMState.RUNNING)


@case("snapshot_delete", Capability.SNAPSHOT)
async def _snapshot_delete(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    name = f"s{len(bench.notes)}"
    bench.notes[name] = True
    await bench.here.snapshot_create(bench.guest.id, name)
    before = await _names(bench)
    done = await call_off(bench.here.snapshot_delete(bench.guest.id, name), delay)
    after = await _names(bench)
    gone = [n for n in before if n != name]
    assert after == gone if done else after in (before, gone)
    one_of(await bench.state(), VMState.RUNNING)


@case("snapshot_revert", Capability.SNAPSHOT)
async def _snapshot_revert(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.STOPPED)
    if not await _names(bench):
        await bench.here.snapshot_create(bench.guest.id, "base")
    await call_off(bench.here.snapshot_revert(bench.guest.id, "base"), delay)
    assert await _names(bench) == ["base"]
    one_of(await bench.state(), VMState.STOPPED)


@case("clone_disks", Capability.SNAPSHOT)
async def _clone_disks(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.STOPPED)
    clone = bench.hosts.guest("clone")
    done = await call_off(bench.here.clone_disks(bench.guest.id, clone.id, snapshot=None), delay)
    if not done:  # none of the copies left, or all of them
        with contextlib.suppress(DriverError):
            await bench.here.clone_disks(bench.guest.id, clone.id, snapshot=None)
    assert (await bench.here.start(clone)).state is VMState.RUNNING
    await bench.here.destroy(clone.id)
    one_of(await bench.state(), VMState.STOPPED)


@case("export_disk", Capability.SNAPSHOT)
async def _export_disk(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.STOPPED)
    staged = staging_dir(bench.hosts.storage, "export", "conformance")
    done = await call_off(bench.here.export_disk(bench.guest.id, staged.name, snapshot=None), delay)
    if not done:  # it can be exported all the same
        assert await bench.here.export_disk(bench.guest.id, staged.name, snapshot=None) > 0
    assert (staged / "disk.qcow2").stat().st_size > 0
    one_of(await bench.state(), VMState.STOPPED)


@case("prepare_incoming", Capability.LIVE_MIGRATE)
async def _prepare_incoming(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    done = await call_off(bench.there.prepare_incoming(bench.guest, bench.listen()), delay)
    one_of(await bench.state(bench.there), VMState.MIGRATING, *(() if done else (None,)))
    await bench.there.abort_incoming(bench.guest.id)
    assert await bench.state(bench.there) is None


@case("migrate", Capability.LIVE_MIGRATE)
async def _migrate(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    uri = await bench.there.prepare_incoming(bench.guest, bench.listen())
    done = await call_off(bench.here.migrate(bench.guest.id, uri, timeout=60), delay)
    stayed = await bench.state()
    one_of(stayed, None, *(() if done else (VMState.RUNNING,)))
    settled = await bench.there.settle_incoming(bench.guest.id)
    if stayed is None:  # it went: the target has all of it
        assert settled is not None and settled.state is VMState.RUNNING
        await bench.swap()
    else:
        left = await bench.state(bench.there)
        assert settled is None and left is None, f"called off, it runs here and there: {left}"


@case("finish_incoming", Capability.LIVE_MIGRATE)
async def _finish_incoming(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    uri = await bench.there.prepare_incoming(bench.guest, bench.listen())
    await bench.here.migrate(bench.guest.id, uri, timeout=60)
    await bench.swap()
    done = await call_off(bench.here.finish_incoming(bench.guest.id), delay)
    found = await bench.state()
    one_of(found, VMState.RUNNING, *(() if done else (VMState.MIGRATING,)))
    if found is VMState.MIGRATING:
        assert (await bench.here.finish_incoming(bench.guest.id)).state is VMState.RUNNING


@case("abort_incoming", Capability.LIVE_MIGRATE)
async def _abort_incoming(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await bench.there.prepare_incoming(bench.guest, bench.listen())
    done = await call_off(bench.there.abort_incoming(bench.guest.id), delay)
    one_of(await bench.state(bench.there), None, *(() if done else (VMState.MIGRATING,)))
    await bench.there.abort_incoming(bench.guest.id)


@case("settle_incoming", Capability.LIVE_MIGRATE)
async def _settle_incoming(bench: Bench, delay: float) -> None:
    await bench.ensure(VMState.RUNNING)
    await bench.there.prepare_incoming(bench.guest, bench.listen())
    done = await call_off(bench.there.settle_incoming(bench.guest.id), delay)
    one_of(await bench.state(bench.there), None, *(() if done else (VMState.MIGRATING,)))
    await bench.there.abort_incoming(bench.guest.id)


async def probe_capacity(bench: Bench, driver: Driver) -> None:
    """A guest of all the vCPUs and memory that the VMs listed do not hold starts."""
    site = bench.site
    held = [dom.spec for dom in await driver.list() if dom.state in RESERVING]
    vcpus = site.vcpus - sum(spec.vcpus for spec in held)
    memory_mb = site.memory_mb - sum(spec.memory_mb for spec in held)
    if vcpus < 1 or memory_mb < site.guest_memory_mb:
        return
    probe = bench.hosts.guest("probe", vcpus=vcpus, memory_mb=memory_mb)
    assert (await driver.start(probe)).state is VMState.RUNNING, "capacity is still held"
    await driver.destroy(probe.id)


async def refuses(bench: Bench, name: str) -> None:
    """A method whose capability is missing raises DriverError (and changes nothing)."""
    await bench.ensure(VMState.RUNNING)
    with refused(DriverError):
        await CASES[name][1](bench, 0.0)
    await states(bench.here)


@pytest.mark.parametrize("method", list(CASES))
async def test_a_call_called_off_leaves_the_vm_as_it_was_or_would_have_been(
    hosts: Hosts, method: str
) -> None:
    site = hosts.site
    here, there = await hosts.open("a", **site.slow), await hosts.open("b", **site.slow)
    guest = hosts.guest("called-off", disks=[{"size_gb": 1}])
    bench = Bench(hosts, here, there, guest)
    capability, run = CASES[method]
    if capability is not None and not declares(here, capability):
        await refuses(bench, method)
        return
    for delay in site.cancel_delays:
        await run(bench, delay)
    if (await states(bench.here)).get(guest.id) is VMState.RUNNING:
        await alive(site, bench.here, guest.id, timeout=site.boot_timeout)
    for driver in (bench.here, bench.there):
        await probe_capacity(bench, driver)
