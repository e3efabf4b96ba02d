"""The libvirt driver against plain libvirt, and Usher on libvirt nodes, on the tiny guest.

Part of ``bench/realvm.py`` (``--libvirt-rounds N``, default ``--rounds``). Two private
libvirt daemons (:func:`usher.vmm.libvirt_daemon.start_libvirt_host`, on 127.0.0.1 with
ports of their own) serve three ways of doing the same things to the same guest (1 vCPU,
256 MiB, the domain XML of :func:`usher.vmm.libvirt_xml.domain_xml`), alternating, each
round: boot (request → running, → ``USHER-READY`` on the console), pause, resume, a live
migration to the other daemon, destroy (there).

* **plain**: libvirt-python by hand. The overlay is made before the clock starts (as for
  plain QEMU); ``defineXML`` + ``create``; ``suspend``; ``resume``; the migration as
  :mod:`usher.vmm.libvirt_migration` does it (the domain's two XMLs with the target's console
  socket, ``migrateSetMaxDowntime``, ``migrateToURI3`` peer-to-peer with the same flags and
  parameters), downtime from ``jobStats(COMPLETED)``; ``destroy`` + ``undefine``.
* **driver**: two :class:`usher.vmm.libvirt_driver.LibvirtDriver` objects in this process,
  one per daemon: ``start``, ``pause``, ``resume``, ``prepare_incoming`` + ``migrate`` +
  ``finish_incoming``, ``destroy``. Every libvirt call the driver makes is timed (its link's
  thread pool), so each step splits into libvirt's time and the driver's own.
* **usher**: a controller and two LNMs with the libvirt driver on the same daemons (the
  ``--driver-option``\\ s of ``usher local --driver libvirt``): request → operation done.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from shutil import which
from typing import Any

import libvirt

from usher.client import AsyncClient
from usher.images import catalog
from usher.model import Image, VMSpec
from usher.vmm.base import Driver, Guest, load_driver
from usher.vmm.libvirt_daemon import LibvirtHost, start_libvirt_host
from usher.vmm.libvirt_driver import LibvirtDriver
from usher.vmm.libvirt_migration import FLAGS
from usher.vmm.libvirt_xml import Paths, Record, domain_xml, with_console_socket
from usher.vmm.qemu_argv import kernel_boot, nics_of

DOWNTIME_MS = 300  # the libvirt driver's defaults
BANDWIDTH_MIBPS = 1024
STEPS = ("running_s", "ready_s", "pause_s", "resume_s", "migration_s", "downtime_ms", "destroy_s")

Marker = Callable[[Path], Any]
"""``await wait_marker(console_log)``: when the guest said it is up (perf_counter)."""


class Daemons:
    """Two private libvirt daemons, ``lv-a`` and ``lv-b``, under ``root``
    (:func:`usher.vmm.libvirt_daemon.start_libvirt_host`: each under a subreaper of its own,
    so a QEMU that ends is reaped at once, as a host's init does)."""

    NAMES = ("lv-a", "lv-b")

    def __init__(self, root: Path) -> None:
        self.hosts: list[LibvirtHost] = []
        try:
            for name in self.NAMES:
                self.hosts.append(start_libvirt_host(name, root / name))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the daemons (which kills their QEMUs)."""
        for host in self.hosts:
            host.stop()


def driver_options(daemon: LibvirtHost) -> dict[str, str]:
    """What points a libvirt driver at ``daemon`` (as ``usher local --driver libvirt`` does)."""
    return {
        "uri": daemon.uri,
        "migrate_connect": f"qemu+tcp://{{host}}:{daemon.tcp_port}/system",
    }


def lnm_options(daemon: LibvirtHost) -> list[str]:
    """:func:`driver_options` as ``usher lnm --driver-option`` arguments."""
    return [f"{key}={value}" for key, value in driver_options(daemon).items()]


class Timed:
    """Seconds since ``start()``, step by step."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        took, self.t = now - self.t, now
        return took


# plain libvirt --------------------------------------------------------------------------------


def _paths(storage: Path, local: Path, image: Image, vm_id: str) -> Paths:
    """The files of ``vm_id``'s domain, where :meth:`LibvirtDriver.paths` puts them."""
    shared = catalog.vm_dir(storage, vm_id)
    return Paths(
        disk=str(shared / catalog.DISK),
        data_disks=(),
        console_log=str(shared / "console.log"),
        console_socket=str(local / "console.sock"),
        seed=None,
        kernel=kernel_boot(str(storage), image, vm_id),
    )


def _migrate_plain(dom: libvirt.virDomain, target: LibvirtHost, console: str) -> dict[str, float]:
    """The driver's libvirt calls for a live migration (the blocking part of a round)."""
    t = Timed()
    flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
    live = dom.XMLDesc(flags)
    persistent = dom.XMLDesc(flags | libvirt.VIR_DOMAIN_XML_INACTIVE)
    params = {
        libvirt.VIR_MIGRATE_PARAM_URI: "tcp://127.0.0.1",
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: with_console_socket(live, console),
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: with_console_socket(persistent, console),
        libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: BANDWIDTH_MIBPS,
    }
    dom.migrateSetMaxDowntime(DOWNTIME_MS, 0)
    prepared = t.lap()
    dom.migrateToURI3(target.peer_uri, params, FLAGS)
    return {"xml_and_downtime_s": prepared, "migrate_to_uri3_s": t.lap()}


async def plain_libvirt(
    daemons: list[LibvirtHost],
    conns: list[libvirt.virConnect],
    root: Path,
    storage: Path,
    image: Image,
    spec: VMSpec,
    wait_marker: Marker,
    n: int,
) -> dict[str, Any]:
    vm_id = f"plain-lv-{n}"
    local = [root / "plain-lv" / side / vm_id for side in ("a", "b")]
    for path in local:
        path.mkdir(parents=True, exist_ok=True)
    paths = _paths(storage, local[0], image, vm_id)
    record = Record(id=vm_id, name=vm_id, spec=spec, image=image, nics=nics_of(vm_id, []))
    xml = domain_xml(record, paths, domain_type="qemu", default_bridge=None)
    run = asyncio.to_thread
    result: dict[str, Any] = {}
    try:
        t = Timed()
        await run(catalog.create_overlay, storage, image, vm_id)
        result["overlay_s"] = t.lap()
        t0 = time.perf_counter()
        dom = await run(conns[0].defineXML, xml)
        result["define_s"] = t.lap()
        await run(dom.create)
        result["create_s"] = t.lap()
        result["running_s"] = time.perf_counter() - t0
        result["ready_s"] = await wait_marker(Path(paths.console_log)) - t0
        t.lap()
        await run(dom.suspend)
        result["pause_s"] = t.lap()
        await run(dom.resume)
        result["resume_s"] = t.lap()
        phases = await run(_migrate_plain, dom, daemons[1], str(local[1] / "console.sock"))
        result["migration_s"] = t.lap()
        result["migration_phases"] = phases
        stats = await run(dom.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        result["downtime_ms"] = stats.get("downtime")
        await run(dom.undefine)
        moved = await run(conns[1].lookupByName, vm_id)
        t.lap()
        await run(moved.destroy)
        result["destroy_call_s"] = t.lap()
        await run(moved.undefine)
        result["undefine_s"] = t.lap()
        result["destroy_s"] = result["destroy_call_s"] + result["undefine_s"]
        return result
    finally:
        for conn in conns:
            with contextlib.suppress(libvirt.libvirtError):
                left = conn.lookupByName(vm_id)
                if left.isActive():
                    left.destroy()
                left.undefine()
        catalog.remove_vm_disks(storage, vm_id)


# the driver by itself -------------------------------------------------------------------------


class CallLog:
    """Times every libvirt call a driver makes (they all go through its link's pool)."""

    def __init__(self, driver: LibvirtDriver) -> None:
        self.calls: list[tuple[str, float]] = []
        link = driver.link
        submit = link.submit

        def timed(function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            started = time.perf_counter()
            future = submit(function, *args)
            name = getattr(function, "__name__", repr(function))
            future.add_done_callback(
                lambda _: self.calls.append((name, time.perf_counter() - started))
            )
            return future

        link.submit = timed  # type: ignore[method-assign]

    @contextlib.contextmanager
    def step(self, into: dict[str, dict[str, float]], name: str) -> Iterator[None]:
        """The calls made while the block runs, summed by function, go to ``into[name]``."""
        self.calls.clear()
        yield
        summed: dict[str, float] = defaultdict(float)
        for function, took in self.calls:
            summed[function] += took
        into[name] = dict(summed)


Pair = list[tuple[Driver, "CallLog | None"]]
"""Two open drivers of one kind (a migration goes from the first to the second), each with
the :class:`CallLog` of its libvirt calls (None: not a libvirt driver)."""


async def open_drivers(root: Path, storage: Path, daemons: list[LibvirtHost]) -> Pair:
    """A libvirt driver per daemon, open, with a :class:`CallLog` each."""
    drivers: Pair = []
    for daemon in daemons:
        options: dict[str, Any] = {**driver_options(daemon), "storage_dir": str(storage)}
        driver = load_driver("libvirt", state_dir=str(root / daemon.name), options=options)
        assert isinstance(driver, LibvirtDriver)
        await driver.open()
        drivers.append((driver, CallLog(driver)))
    return drivers


async def open_qemu_drivers(root: Path, storage: Path) -> Pair:
    """Two qemu drivers (two nodes' worth of state) on ``storage``, open."""
    drivers: Pair = []
    for name in ("qemu-a", "qemu-b"):
        options = {"storage_dir": str(storage)}
        driver = load_driver("qemu", state_dir=str(root / name), options=options)
        await driver.open()
        drivers.append((driver, None))
    return drivers


def _step(log: CallLog | None, into: dict[str, dict[str, float]], name: str) -> Any:
    return log.step(into, name) if log is not None else contextlib.nullcontext()


async def driver_round(
    drivers: Pair,
    storage: Path,
    image: Image,
    spec: VMSpec,
    wait_marker: Marker,
    vm_id: str,
) -> dict[str, Any]:
    """A driver by itself (in this process), as the LNM calls it: start, pause, resume,
    live migration to the other driver, destroy there."""
    (source, source_log), (target, target_log) = drivers
    guest = Guest(id=vm_id, name=vm_id, spec=spec, image=image)
    calls: dict[str, dict[str, float]] = {}
    result: dict[str, Any] = {}
    try:
        t = Timed()
        t0 = t.t
        with _step(source_log, calls, "running_s"):
            await source.start(guest)
        result["running_s"] = t.lap()
        result["ready_s"] = await wait_marker(catalog.vm_dir(storage, vm_id) / "console.log") - t0
        t.lap()
        with _step(source_log, calls, "pause_s"):
            await source.pause(vm_id)
        result["pause_s"] = t.lap()
        with _step(source_log, calls, "resume_s"):
            await source.resume(vm_id)
        result["resume_s"] = t.lap()
        with (
            _step(source_log, calls, "migration_source"),
            _step(target_log, calls, "migration_target"),
        ):
            uri = await target.prepare_incoming(guest, "127.0.0.1")
            figures = await source.migrate(vm_id, uri, timeout=120)
            arrived = await target.finish_incoming(vm_id)
        result["migration_s"] = t.lap()
        result["downtime_ms"] = figures.downtime_ms
        stopped, switched, sent = (
            figures.extra.get(stamp) for stamp in ("stopped_at", "switched_at", "completed_at")
        )
        resumed = arrived.resumed_at
        if stopped and switched and sent and resumed:  # the qemu driver: QEMU's stamps
            result["paused_ms"] = round(1000 * (resumed - stopped), 1)
            result["held_ms"] = round(1000 * (switched - stopped), 1)
            result["landing_ms"] = round(1000 * (resumed - sent), 1)
        result["driver_migration_ms"] = figures.total_ms
        with _step(target_log, calls, "destroy_s"):
            await target.destroy(vm_id)
        result["destroy_s"] = t.lap()
        if calls:
            result["calls"] = calls
            result["outside_libvirt_ms"] = outside_libvirt(result, calls)
        return result
    finally:
        for driver, _ in drivers:
            with contextlib.suppress(Exception):
                await driver.destroy(vm_id)


def outside_libvirt(result: dict[str, Any], calls: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per step of the driver, in ms: its time outside libvirt calls (the driver's own code,
    files, thread hand-offs), i.e. the step's time less the calls' (they do not overlap)."""
    in_calls = {step: sum(functions.values()) for step, functions in calls.items()}
    in_calls["migration_s"] = in_calls.pop("migration_source") + in_calls.pop("migration_target")
    return {step: round(1000 * (result[step] - took), 1) for step, took in in_calls.items()}


# Usher end to end -----------------------------------------------------------------------------


async def _op(client: AsyncClient, kind: str, vm_id: str, **kwargs: Any) -> Any:
    done = await client.wait(await client.action(kind, [vm_id], **kwargs), timeout=120, poll=30)
    assert done.status.value == "succeeded", f"{kind}: {done.error}"
    return done


async def usher_libvirt(
    client: AsyncClient,
    nodes: tuple[str, str],
    storage: Path,
    spec: VMSpec,
    wait_marker: Marker,
    n: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    t = Timed()
    t0 = t.t
    op = await client.create_vms(
        names=[f"lv-{n}"], vcpus=spec.vcpus, memory_mb=spec.memory_mb, node=nodes[0]
    )
    done = await client.wait(op, timeout=120, poll=30)
    result["running_s"] = t.lap()
    assert done.status.value == "succeeded", done.error
    vm_id = done.targets[0]
    try:
        result["ready_s"] = await wait_marker(catalog.vm_dir(storage, vm_id) / "console.log") - t0
        t.lap()
        await _op(client, "pause", vm_id)
        result["pause_s"] = t.lap()
        await _op(client, "resume", vm_id)
        result["resume_s"] = t.lap()
        done = await _op(client, "migrate", vm_id, target_node=nodes[1])
        result["migration_s"] = t.lap()
        details = done.result.get("details", {}).get(vm_id, {})
        result["downtime_ms"] = details.get("downtime_ms")
        await _op(client, "destroy", vm_id)
        result["destroy_s"] = t.lap()
        vm_id = ""
        return result
    finally:
        if vm_id:
            with contextlib.suppress(Exception):
                await client.wait(await client.action("destroy", [vm_id]), timeout=60)


# the rounds -----------------------------------------------------------------------------------


class LibvirtBench:
    """The three sides of the libvirt comparison, set up once for all rounds."""

    def __init__(
        self,
        daemons: list[LibvirtHost],
        root: Path,
        storage: Path,
        spec: VMSpec,
        wait_marker: Marker,
    ) -> None:
        self.daemons, self.root, self.storage = daemons, root, storage
        self.spec, self.wait_marker = spec, wait_marker
        image = catalog.read_manifest(storage, spec.image)
        assert image is not None
        self.image = image
        self.runs: dict[str, list[dict[str, Any]]] = {"plain": [], "driver": [], "usher": []}
        self._conns: list[libvirt.virConnect] = []
        self._drivers: Pair = []

    async def __aenter__(self) -> LibvirtBench:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors raise; no echo
        self._conns = [daemon.connect() for daemon in self.daemons]
        self._drivers = await open_drivers(self.root / "drivers", self.storage, self.daemons)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for driver, _ in self._drivers:
            await driver.close()
        for conn in self._conns:
            conn.close()

    async def round(self, client: AsyncClient, nodes: tuple[str, str], n: int) -> None:
        plain = await plain_libvirt(
            self.daemons,
            self._conns,
            self.root,
            self.storage,
            self.image,
            self.spec,
            self.wait_marker,
            n,
        )
        driver = await driver_round(
            self._drivers, self.storage, self.image, self.spec, self.wait_marker, f"drv-lv-{n}"
        )
        usher = await usher_libvirt(client, nodes, self.storage, self.spec, self.wait_marker, n)
        for side, runs in (("plain", plain), ("driver", driver), ("usher", usher)):
            self.runs[side].append(runs)
        brief = {
            side: {k: round(v, 3) for k, v in r.items() if k in STEPS and v is not None}
            for side, r in (("plain", plain), ("driver", driver), ("usher", usher))
        }
        print(f"libvirt round {n}: {brief}", flush=True)


def call_profile(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per step of the driver: the median time in each libvirt function, and outside them
    (``(driver)``), in ms."""
    steps: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for step, functions in run["calls"].items():
            for function, took in functions.items():
                steps[step][function].append(took)
        for step, ms in run["outside_libvirt_ms"].items():
            steps[step]["(driver)"].append(ms / 1000)
    rounds = len(runs)
    return {
        step: {
            # a call missing from a round took no time in it
            function: round(1000 * _median(values + [0.0] * (rounds - len(values))), 1)
            for function, values in functions.items()
        }
        for step, functions in steps.items()
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def missing_tool() -> str | None:
    """A tool the private daemons need that is not on PATH, or None."""
    return next((tool for tool in ("libvirtd", "unshare", "taskset") if not which(tool)), None)
