"""Real VMs: what Usher adds over plain QEMU, measured in the same run on the same guest.

    python bench/realvm.py --rounds 5

The tiny image (built first if the storage has none) is booted through Usher (controller,
two qemu-driver LNMs, ``node-1`` and ``node-2``), by two qemu drivers in this process (as
the LNM calls them) and by this script with plain ``qemu-system-x86_64`` and the command
line the driver would build (:func:`usher.vmm.qemu_argv.qemu_argv`: same accelerator,
machine, memory, disk overlay, NIC and kernel command line; ``-daemonize`` as the driver
does), alternating, ``--rounds`` times each. Guest-ready is the ``USHER-READY`` line on the
serial console (the console file is polled every 10 ms in both cases).

Live migration: through Usher (``migrate`` to the other node, request to operation done)
against a plain QMP migration of a plainly started guest (launch the incoming QEMU,
``migrate-incoming``, ``migrate`` with the driver's parameters, until the target runs, as
QEMU's events tell), same guest, same host, same run. The guest's pause on both sides is from
the source's ``STOP`` event to the target's ``RESUME`` event, as QEMU stamped them (Usher's
operation reports it as ``paused_ms``, from the qemu driver's events); QEMU's own
``downtime`` (the source's figure, which leaves out the target's loading and start) is kept
beside it.

Pause, resume and destroy: the Usher operations (request to done) against QMP ``stop`` and
``cont`` and a SIGKILL (until the process is gone) of the plain guest.

``--libvirt-rounds N`` (default ``--rounds``): the same figures for plain libvirt, the libvirt
driver by itself and Usher with two libvirt-driver LNMs, on two private libvirt daemons, in
the same rounds (:mod:`realvm_libvirt`).

``--debian-rounds N``: also the Debian image (cloud-init, systemd, sshd), request to SSH
through Usher against plain QEMU with the same command line and seed
(:mod:`realvm_debian`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import RESULTS, BenchCluster, write_result
from qemu.qmp import EventListener, QMPClient
from realvm_debian import measure_debian
from realvm_libvirt import (
    STEPS,
    Daemons,
    LibvirtBench,
    Pair,
    call_profile,
    driver_round,
    lnm_options,
    missing_tool,
    open_qemu_drivers,
)

from usher.client import AsyncClient
from usher.images import catalog
from usher.images.debian import build_debian
from usher.images.tiny import build_tiny
from usher.model import VMSpec
from usher.vmm.libvirt_daemon import LibvirtHost
from usher.vmm.qemu_accel import detect_accel
from usher.vmm.qemu_argv import KernelBoot, Nic, default_mac, qemu_argv

BINARY = "qemu-system-x86_64"
READY = b"USHER-READY"
SPEC = VMSpec(vcpus=1, memory_mb=256, image="tiny")
DOWNTIME_MS = 300  # the qemu driver's defaults
BANDWIDTH = 1024 * 2**20
LIBVIRT_NODES = ("node-3", "node-4")
"""The LNMs with the libvirt driver (``node-1`` and ``node-2`` run the qemu driver)."""


async def wait_marker(path: Path, count: int = 1, timeout: float = 120) -> float:
    """Poll ``path`` until ``READY`` appears ``count`` times; return when (perf_counter)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(OSError):
            if path.read_bytes().count(READY) >= count:
                return time.perf_counter()
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no {READY.decode()} in {path} after {timeout} s")


class PlainGuest:
    """The tiny guest run by hand, as the qemu driver would run it."""

    def __init__(self, root: Path, storage: Path, accel: str, name: str) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage, self.accel, self.name = storage, accel, name
        image = catalog.read_manifest(storage, "tiny")
        assert image is not None
        self.image = image
        self.disk = catalog.create_overlay(storage, image, f"plain-{name}")
        self.console = self.dir / "console.log"
        self.pids: list[int] = []

    def argv(self, qmp: Path, incoming: bool) -> list[str]:
        kernel = KernelBoot(
            kernel=str(catalog.image_path(self.storage, self.image, "kernel")),
            initrd=str(catalog.image_path(self.storage, self.image, "initrd")),
            append=f"{self.image.cmdline or ''} usher.name={self.name}".strip(),
        )
        return qemu_argv(
            binary=BINARY,
            accel=self.accel,
            name=self.name,
            spec=SPEC,
            disk=str(self.disk),
            console=str(self.console),
            console_socket=str(qmp.with_suffix(".console")),
            qmp_socket=str(qmp),
            log=str(qmp.with_suffix(".log")),
            nics=[(Nic(default_mac(self.name)), None)],
            kernel=kernel,
            incoming=incoming,
        )

    def launch(self, qmp: Path, incoming: bool = False) -> int:
        pidfile = qmp.with_suffix(".pid")
        subprocess.run(
            [*self.argv(qmp, incoming), "-daemonize", "-pidfile", str(pidfile)],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        pid = int(pidfile.read_text())
        self.pids.append(pid)
        return pid

    def kill(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
        catalog.remove_vm_disks(self.storage, f"plain-{self.name}")


async def qmp_client(path: Path) -> QMPClient:
    client = QMPClient("bench")
    await client.connect(str(path))
    return client


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, or a dead orphan not reaped yet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def plain_boot(root: Path, storage: Path, accel: str, n: int) -> dict[str, float]:
    """Launch → running → ready, then QMP ``stop`` and ``cont``, then SIGKILL until gone."""
    guest = PlainGuest(root, storage, accel, f"plain-boot-{n}")
    try:
        t0 = time.perf_counter()
        pid = guest.launch(guest.dir / "qmp.sock")
        running = time.perf_counter() - t0  # -daemonize returns once the guest runs
        ready = await wait_marker(guest.console) - t0
        qmp = await qmp_client(guest.dir / "qmp.sock")
        t = time.perf_counter()
        await qmp.execute("stop")
        pause = time.perf_counter() - t
        t = time.perf_counter()
        await qmp.execute("cont")
        resume = time.perf_counter() - t
        await qmp.disconnect()
        t = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while alive(pid):
            await asyncio.sleep(0.001)
        destroy = time.perf_counter() - t
        return {
            "running_s": running,
            "ready_s": ready,
            "pause_s": pause,
            "resume_s": resume,
            "destroy_s": destroy,
        }
    finally:
        guest.kill()


async def usher_boot(client: AsyncClient, storage: Path, n: int) -> dict[str, float]:
    """Request → running → ready, then the pause, resume and destroy operations."""
    t0 = time.perf_counter()
    op = await client.create_vms(
        names=[f"boot-{n}"], vcpus=SPEC.vcpus, memory_mb=SPEC.memory_mb, node="node-1"
    )
    done = await client.wait(op, timeout=120, poll=30)
    running = time.perf_counter() - t0
    assert done.status.value == "succeeded", done.error
    vm_id = done.targets[0]
    ready = await wait_marker(catalog.vm_dir(storage, vm_id) / "console.log") - t0
    took = {}
    for kind in ("pause", "resume", "destroy"):
        t = time.perf_counter()
        done = await client.wait(await client.action(kind, [vm_id]), timeout=60, poll=30)
        took[f"{kind}_s"] = time.perf_counter() - t
        assert done.status.value == "succeeded", f"{kind}: {done.error}"
    return {"running_s": running, "ready_s": ready, **took}


async def plain_migration(root: Path, storage: Path, accel: str, n: int) -> dict[str, Any]:
    """A plain QMP migration, following QEMU's events as the driver does: done when the
    source reports it completed and the target runs the guest."""
    guest = PlainGuest(root, storage, accel, f"plain-mig-{n}")
    source_qmp, target_qmp = guest.dir / "src.sock", guest.dir / "dst.sock"
    try:
        guest.launch(source_qmp)
        await wait_marker(guest.console)
        source = await qmp_client(source_qmp)
        t0 = time.perf_counter()
        guest.launch(target_qmp, incoming=True)
        target = await qmp_client(target_qmp)
        resumed, stopped = EventListener("RESUME"), EventListener(("STOP", "MIGRATION"))
        with target.listen(resumed), source.listen(stopped):
            await target.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
            listening = await target.execute("query-migrate")
            port = listening["socket-address"][0]["port"]
            await source.execute(
                "migrate-set-capabilities",
                {
                    "capabilities": [
                        {"capability": "auto-converge", "state": True},
                        {"capability": "events", "state": True},
                    ]
                },
            )
            await source.execute(
                "migrate-set-parameters",
                {"downtime-limit": DOWNTIME_MS, "max-bandwidth": BANDWIDTH},
            )
            await source.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
            async for event in stopped:
                if event.get("data", {}).get("status") in ("completed", "failed", "cancelled"):
                    break
            status = await source.execute("query-migrate")
            assert status["status"] == "completed", status
            await resumed.get()
            total = time.perf_counter() - t0
        await source.disconnect()
        await target.disconnect()
        return {
            "total_s": total,
            "paused_ms": round(1000 * (stamp(resumed, "RESUME") - stamp(stopped, "STOP")), 1),
            "landing_ms": round(1000 * (stamp(resumed, "RESUME") - stamp(stopped, "MIGRATION")), 1),
            "downtime_ms": status.get("downtime"),
        }
    finally:
        guest.kill()


def stamp(events: EventListener, name: str) -> float:
    """QEMU's timestamp of the last event ``name`` in ``events`` (seconds since the epoch; the
    last ``MIGRATION`` event is its end, ``completed``)."""
    event = [e for e in events.history if e["event"] == name][-1]
    return event["timestamp"]["seconds"] + event["timestamp"]["microseconds"] / 1e6


async def usher_migration(client: AsyncClient, storage: Path, n: int) -> dict[str, Any]:
    op = await client.create_vms(names=[f"mig-{n}"], node="node-1")
    done = await client.wait(op, timeout=120, poll=30)
    vm_id = done.targets[0]
    await wait_marker(catalog.vm_dir(storage, vm_id) / "console.log")
    t0 = time.perf_counter()
    op = await client.action("migrate", [vm_id], target_node="node-2")
    done = await client.wait(op, timeout=120, poll=30)
    total = time.perf_counter() - t0
    assert done.status.value == "succeeded", done.error
    details = done.result.get("details", {}).get(vm_id, {})
    await client.wait(await client.action("destroy", [vm_id]), timeout=60)
    return {
        "total_s": total,
        "paused_ms": details.get("paused_ms"),
        "downtime_ms": details.get("downtime_ms"),
    }


def summary(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    values = [r[key] for r in runs if r.get(key) is not None]
    p90 = statistics.quantiles(values, n=10, method="inclusive")[8] if len(values) > 1 else None
    return {
        "median": round(statistics.median(values), 3) if values else None,
        "min": round(min(values), 3) if values else None,
        "p90": round(p90, 3) if p90 is not None else (values[0] if values else None),
        "max": round(max(values), 3) if values else None,
        "runs": [round(v, 3) for v in values],
    }


OPS = ("pause_s", "resume_s", "destroy_s")
MIGRATION_FIGURES = ("total_s", "paused_ms", "landing_ms", "downtime_ms")
"""A live migration's figures: its time, the guest's pause (source's STOP → target's RESUME),
the pause's last part (source's ``MIGRATION`` ``completed`` → target's RESUME: the target loads
the last of the stream and starts the guest) and QEMU's own downtime figure."""


def summaries(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: summary(runs, key) for key in keys}


async def measure(
    cluster: BenchCluster,
    root: Path,
    storage: Path,
    rounds: int,
    debian_rounds: int,
    qemu_drivers: Pair,
    libvirt: LibvirtBench | None,
    libvirt_rounds: int,
) -> dict[str, Any]:
    accel = detect_accel(BINARY)
    image = catalog.read_manifest(storage, SPEC.image)
    assert image is not None
    boots: dict[str, list[dict[str, float]]] = {"usher": [], "plain": []}
    qemu_driver: list[dict[str, Any]] = []
    migrations: dict[str, list[dict[str, Any]]] = {"usher": [], "plain": []}
    async with AsyncClient(cluster.url, cluster.token, timeout=300) as client:
        for n in range(max(rounds, libvirt_rounds if libvirt else 0)):
            if n < rounds:
                boots["usher"].append(await usher_boot(client, storage, n))
                boots["plain"].append(await plain_boot(root, storage, accel.accel, n))
                migrations["usher"].append(await usher_migration(client, storage, n))
                migrations["plain"].append(await plain_migration(root, storage, accel.accel, n))
                qemu_driver.append(
                    await driver_round(qemu_drivers, storage, image, SPEC, wait_marker, f"drv-{n}")
                )
                print(f"round {n}: boot {boots['usher'][-1]} vs {boots['plain'][-1]}", flush=True)
                print(
                    f"  migration {migrations['usher'][-1]} vs {migrations['plain'][-1]}",
                    flush=True,
                )
                print(f"  qemu driver by itself {qemu_driver[-1]}", flush=True)
            if libvirt is not None and n < libvirt_rounds:
                await libvirt.round(client, LIBVIRT_NODES, n)
        debian = await measure_debian(client, root, storage, accel.accel, debian_rounds)
    boot = {who: summaries(b, ("running_s", "ready_s")) for who, b in boots.items()}
    ops = {who: summaries(b, OPS) for who, b in boots.items()}
    mig = {who: summaries(m, MIGRATION_FIGURES) for who, m in migrations.items()}
    u_ready, p_ready = boot["usher"]["ready_s"]["median"], boot["plain"]["ready_s"]["median"]
    u_mig, p_mig = mig["usher"]["total_s"]["median"], mig["plain"]["total_s"]["median"]
    debian_summary = {
        who: {"running_s": summary(d, "running_s"), "ssh_s": summary(d, "ssh_s")}
        for who, d in debian.items()
    }
    return {
        "debian": debian_summary if debian_rounds else None,
        "accel": accel.accel,
        "accel_reason": accel.reason,
        "spec": SPEC.model_dump(mode="json"),
        "rounds": rounds,
        "boot": boot,
        "ops": ops,
        "boot_added_s": round(u_ready - p_ready, 3),
        "boot_ratio": round(u_ready / p_ready, 3),
        "migration": mig,
        "migration_added_s": round(u_mig - p_mig, 3),
        "migration_ratio": round(u_mig / p_mig, 3),
        "qemu_driver": summaries(qemu_driver, (*STEPS, "paused_ms", "held_ms", "landing_ms")),
        "libvirt": libvirt_summary(libvirt) if libvirt is not None else None,
    }


def libvirt_summary(libvirt: LibvirtBench) -> dict[str, Any]:
    """Each side's figures, the per-round runs, and where the driver's time went."""
    steps = tuple(STEPS)
    return {
        "rounds": len(libvirt.runs["plain"]),
        "sides": {who: summaries(runs, steps) for who, runs in libvirt.runs.items()},
        "driver_calls_ms": call_profile(libvirt.runs["driver"]),
        "runs": libvirt.runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--storage",
        default=str(Path.home() / ".cache" / "usher" / "bench-storage"),
        help="storage dir holding (or to hold) the tiny image",
    )
    parser.add_argument(
        "--debian-rounds",
        type=int,
        default=0,
        help="also time the debian image (built first if missing) from request to SSH",
    )
    parser.add_argument(
        "--libvirt-rounds",
        type=int,
        default=None,
        help="rounds of plain libvirt, the libvirt driver and Usher on libvirt nodes "
        "(default: --rounds; 0: none)",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    libvirt_rounds = args.rounds if args.libvirt_rounds is None else args.libvirt_rounds
    if libvirt_rounds and (tool := missing_tool()):
        print(f"no libvirt rounds: {tool} is not on PATH", file=sys.stderr)
        libvirt_rounds = 0
    storage = Path(args.storage)
    build_tiny(storage, progress=lambda line: print(line, file=sys.stderr))
    if args.debian_rounds:
        build_debian(storage, progress=lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="usher-bench-") as tmp:
        root = Path(tmp)
        cluster = BenchCluster(root, storage=storage)
        libvirt = Daemons(root / "libvirt") if libvirt_rounds else None
        daemons = libvirt.hosts if libvirt else []
        try:
            cluster.start_ctrl()
            for name in ("node-1", "node-2"):
                cluster.start_lnm(name, driver="qemu")
            for name, daemon in zip(LIBVIRT_NODES, daemons, strict=False):
                cluster.start_lnm(name, driver="libvirt", driver_options=lnm_options(daemon))
            cluster.wait_nodes(2 + len(daemons), timeout=120)
            result = asyncio.run(run(cluster, root, storage, args, daemons, libvirt_rounds))
        finally:
            cluster.stop()
            if libvirt is not None:
                libvirt.stop()
    path = write_result("realvm", result, Path(args.out))
    print(
        f"{path.name}: ready +{result['boot_added_s']} s (x{result['boot_ratio']}), "
        f"migration +{result['migration_added_s']} s (x{result['migration_ratio']})"
    )


async def run(
    cluster: BenchCluster,
    root: Path,
    storage: Path,
    args: argparse.Namespace,
    daemons: list[LibvirtHost],
    libvirt_rounds: int,
) -> dict[str, Any]:
    plain, rounds, debian_rounds = root / "plain", args.rounds, args.debian_rounds
    qemu_drivers = await open_qemu_drivers(root / "qemu-drivers", storage)
    try:
        if not daemons:
            return await measure(
                cluster, plain, storage, rounds, debian_rounds, qemu_drivers, None, 0
            )
        async with LibvirtBench(daemons, root / "libvirt", storage, SPEC, wait_marker) as lv:
            return await measure(
                cluster, plain, storage, rounds, debian_rounds, qemu_drivers, lv, libvirt_rounds
            )
    finally:
        for driver, _ in qemu_drivers:
            await driver.close()


if __name__ == "__main__":
    main()
