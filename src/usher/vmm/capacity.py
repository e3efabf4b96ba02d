"""What a host can still fit: the one check every driver makes before a guest takes its
vCPUs and memory."""

from __future__ import annotations

from collections.abc import Iterable

from usher.model import VMSpec
from usher.vmm.base import InsufficientCapacity


def require_room(
    vm_id: str, spec: VMSpec, held: Iterable[VMSpec], *, vcpus: int, memory_mb: int
) -> None:
    """Raise :class:`InsufficientCapacity` unless ``spec`` fits in a host of ``vcpus`` and
    ``memory_mb`` beside what ``held`` holds."""
    held = list(held)
    free_vcpus = vcpus - sum(other.vcpus for other in held)
    free_memory_mb = memory_mb - sum(other.memory_mb for other in held)
    if spec.vcpus > free_vcpus or spec.memory_mb > free_memory_mb:
        raise InsufficientCapacity(
            f"VM {vm_id} needs {spec.vcpus} vCPUs and {spec.memory_mb} MB, but only "
            f"{free_vcpus} vCPUs and {free_memory_mb} MB are free on this host"
        )
