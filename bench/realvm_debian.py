"""The Debian guest through Usher against plain QEMU booting the same image: request → SSH.

Part of ``bench/realvm.py --debian-rounds N``. Through Usher: ``create`` with the image
``debian`` and a fresh key in the ``ssh_keys`` kwarg, then ``ssh`` to where
``GET /v1/vms/{vm}/ssh`` says (the port the node forwards) until ``true`` runs. Plain: the
command line the qemu driver builds (:func:`usher.vmm.qemu_argv.qemu_argv`, same overlay,
kernel, seed CD-ROM with the same accounts, same forwarded port), ``-daemonize``, then the
same ``ssh`` loop. Both poll every 0.5 s; the figure is from the request (or the launch) to
the first ``ssh … true`` that succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from usher.client import AsyncClient
from usher.guest_config import GuestConfig
from usher.images import catalog
from usher.images.nocloud import build_seed
from usher.model import VMSpec
from usher.vmm.qemu_argv import KernelBoot, Nic, default_mac, qemu_argv
from usher.vmm.qemu_seed import free_port

BINARY = "qemu-system-x86_64"
SPEC = VMSpec(vcpus=1, memory_mb=512, image="debian")
SSH_TIMEOUT = 600.0


def keypair(directory: Path) -> tuple[Path, str]:
    """A new ed25519 key in ``directory``: its private key file and public key line."""
    key = directory / "bench_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, key.with_suffix(".pub").read_text().strip()


async def wait_ssh(key: Path, user: str, host: str, port: int, t0: float) -> float:
    """Seconds from ``t0`` until ``ssh user@host -p port true`` succeeds."""
    argv = [
        "ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", f"{user}@{host}", "true",
    ]  # fmt: skip
    while time.perf_counter() - t0 < SSH_TIMEOUT:
        ssh = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if await ssh.wait() == 0:
            return time.perf_counter() - t0
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no SSH at {host}:{port} after {SSH_TIMEOUT} s")


async def usher_debian(client: AsyncClient, key: Path, public: str, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    op = await client.create_vms(
        names=[f"deb-{n}"],
        vcpus=SPEC.vcpus,
        memory_mb=SPEC.memory_mb,
        image="debian",
        kwargs={"ssh_keys": [public]},
    )
    done = await client.wait(op, timeout=300, poll=30)
    running = time.perf_counter() - t0
    assert done.status.value == "succeeded", done.error
    vm_id = done.targets[0]
    access = await client.ssh_access(vm_id)
    ready = await wait_ssh(key, access.user, access.host, access.port, t0)
    await client.wait(await client.action("destroy", [vm_id]), timeout=120)
    return {"running_s": running, "ssh_s": ready}


async def plain_debian(
    root: Path, storage: Path, accel: str, key: Path, public: str, n: int
) -> dict[str, float]:
    """The Debian image booted by hand as the qemu driver would, with the same seed."""
    name, vm_id = f"plain-deb-{n}", f"plain-deb-{n}"
    image = catalog.read_manifest(storage, "debian")
    assert image is not None
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    config = GuestConfig(vm_id, name)
    config.add_user("admin", keys=[public], sudo=True)
    seed = workdir / "seed.iso"
    pidfile = workdir / "qemu.pid"
    port = free_port("127.0.0.1")
    try:
        t0 = time.perf_counter()
        disk = catalog.create_overlay(storage, image, vm_id)
        build_seed(seed, **config.seed())
        argv = qemu_argv(
            binary=BINARY,
            accel=accel,
            name=name,
            spec=SPEC,
            disk=str(disk),
            console=str(workdir / "console.log"),
            console_socket=str(workdir / "console.sock"),
            qmp_socket=str(workdir / "qmp.sock"),
            log=str(workdir / "qemu.log"),
            nics=[(Nic(default_mac(vm_id)), None)],
            kernel=KernelBoot(
                kernel=str(catalog.image_path(storage, image, "kernel")),
                initrd=str(catalog.image_path(storage, image, "initrd")),
                append=f"{image.cmdline or ''} usher.name={name}".strip(),
            ),
            incoming=False,
            seed=str(seed),
            ssh_forward=f"127.0.0.1:{port}",
        )
        subprocess.run([*argv, "-daemonize", "-pidfile", str(pidfile)], check=True)
        running = time.perf_counter() - t0
        ready = await wait_ssh(key, "admin", "127.0.0.1", port, t0)
        return {"running_s": running, "ssh_s": ready}
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        await asyncio.sleep(0.5)
        catalog.remove_vm_disks(storage, vm_id)


async def measure_debian(
    client: AsyncClient, root: Path, storage: Path, accel: str, rounds: int
) -> dict[str, Any]:
    """``rounds`` of each, alternating: what each took from request (launch) to SSH."""
    key, public = keypair(root)
    runs: dict[str, list[dict[str, float]]] = {"usher": [], "plain": []}
    for n in range(rounds):
        runs["usher"].append(await usher_debian(client, key, public, n))
        runs["plain"].append(await plain_debian(root, storage, accel, key, public, n))
        print(f"debian round {n}: {runs['usher'][-1]} vs {runs['plain'][-1]}", flush=True)
    return runs
