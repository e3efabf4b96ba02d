"""A ``qemu`` guest's cloud-init seed and the SSH port forwarded to it.

A guest whose :class:`~usher.vmm.base.Guest` carries a ``config`` gets it as a NoCloud seed,
``seed.iso`` in its shared dir, written afresh at each boot here (the target of a live
migration attaches the source's). A guest with a NIC on user-mode networking is not
reachable at an address of its own, so this node forwards a free port of ``forward_host`` to
its port 22: the ``ssh`` endpoint of its :class:`~usher.vmm.base.DomainInfo`.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from usher.images.catalog import ImageError
from usher.images.nocloud import build_seed
from usher.vmm.base import DriverError, Guest
from usher.vmm.qemu_argv import bridge_of
from usher.vmm.qemu_domain import Domain
from usher.vmm.qemu_files import SEED, VMFiles


def free_port(host: str) -> int:
    """A TCP port of ``host`` nobody listens on now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def write_seed_file(files: VMFiles, guest: Guest) -> str:
    """Write ``guest``'s cloud-init configuration as ``seed.iso`` in its shared dir; return
    its path. DriverError if it cannot be written."""
    path = files.shared(guest.id, SEED)
    config = guest.config or {}
    try:
        await asyncio.to_thread(
            build_seed,
            Path(path),
            meta_data=config.get("meta_data") or {},
            user_data=str(config.get("user_data") or ""),
            network_config=config.get("network_config"),
        )
    except (OSError, ValueError, ImageError) as exc:
        raise DriverError(f"VM {guest.id}: cannot write its cloud-init seed: {exc}") from exc
    return path


async def prepare_guest_access(
    dom: Domain,
    guest: Guest,
    files: VMFiles,
    *,
    bridge: str | None,
    forward_host: str,
    write_seed: bool,
) -> None:
    """Set ``dom``'s seed and SSH forward from ``guest``, writing ``seed.iso`` if
    ``write_seed`` or if it is missing; DriverError if it cannot be written."""
    dom.seed = guest.config is not None
    if dom.seed and (write_seed or not Path(files.shared(dom.id, SEED)).exists()):
        await write_seed_file(files, guest)
    user_mode = any(bridge_of(nic, bridge) is None for nic in dom.nics)
    dom.ssh_forward = None
    if dom.seed and user_mode:
        host = f"[{forward_host}]" if ":" in forward_host else forward_host
        dom.ssh_forward = f"{host}:{free_port(forward_host)}"
