"""The ``fake`` driver's host capacity: what its guests hold of the host's vCPUs and memory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from usher.model import Capacity, VMSpec
from usher.vmm.capacity import require_room


class HostCapacity:
    """The host's total capacity and what running, paused and incoming guests (and
    operations under way) hold of it."""

    def __init__(self, total: Capacity) -> None:
        self.total = total
        self._used_vcpus = 0
        self._used_memory_mb = 0

    def reserved(self) -> Capacity:
        return Capacity(vcpus=self._used_vcpus, memory_mb=self._used_memory_mb)

    def clear(self) -> None:
        self._used_vcpus = self._used_memory_mb = 0

    def reserve(self, spec: VMSpec, sign: int = 1) -> None:
        """Hold (``sign`` 1) or free (``sign`` -1) ``spec``'s vCPUs and memory."""
        self._used_vcpus += sign * spec.vcpus
        self._used_memory_mb += sign * spec.memory_mb

    @contextlib.contextmanager
    def claim(self, vm_id: str, spec: VMSpec) -> Iterator[None]:
        """Hold ``spec``'s resources while an operation runs, so concurrent ones cannot
        overbook the host; the caller reserves them for good by changing the VM's state."""
        require_room(
            vm_id,
            spec,
            (),
            vcpus=self.total.vcpus - self._used_vcpus,
            memory_mb=self.total.memory_mb - self._used_memory_mb,
        )
        self.reserve(spec)
        try:
            yield
        finally:
            self.reserve(spec, -1)
