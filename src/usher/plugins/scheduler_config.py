"""The scheduler's configuration: the ``[plugins.scheduler]`` table, checked once at start."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WEIGHERS = ("fit", "spread", "pack", "balanced")
DEFAULT_WEIGHER = "fit"
KEYS = ("weigher", "weighers", "vcpu_ratio", "memory_ratio", "max_vms_per_node", "memory_per_vcpu")
MEMORY_PER_VCPU = 1.5  # GiB: what the fit weigher expects of the VMs to come, unless told


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ratio(config: Mapping[str, Any], key: str, default: float = 1.0) -> float:
    value = config.get(key, default)
    if not _number(value) or value <= 0:
        raise ValueError(f"scheduler: {key} must be a number above 0, not {value!r}")
    return float(value)


def _weights(config: Mapping[str, Any]) -> dict[str, float]:
    if "weigher" in config and "weighers" in config:
        raise ValueError("scheduler: give weigher or weighers, not both")
    if "weighers" not in config:
        name = config.get("weigher", DEFAULT_WEIGHER)
        if name not in WEIGHERS:
            raise ValueError(f"scheduler: unknown weigher {name!r} (one of {', '.join(WEIGHERS)})")
        return {name: 1.0}
    table = config["weighers"]
    if not isinstance(table, Mapping) or not table:
        raise ValueError("scheduler: weighers must be a table like {spread = 1.0, balanced = 0.5}")
    for name, weight in table.items():
        if name not in WEIGHERS:
            raise ValueError(f"scheduler: unknown weigher {name!r} (one of {', '.join(WEIGHERS)})")
        if not _number(weight) or weight < 0:
            raise ValueError(f"scheduler: weight of {name} must be a number ≥ 0, not {weight!r}")
    if not any(table.values()):
        raise ValueError("scheduler: at least one weigher needs a weight above 0")
    return {name: float(weight) for name, weight in table.items()}


@dataclass(frozen=True)
class SchedulerConfig:
    """Validated settings; :meth:`parse` turns the TOML table into one or says what is wrong.

    ``memory_per_vcpu``: the GiB of memory per vCPU the ``fit`` weigher expects of the VMs
    to come (see :func:`usher.plugins.scheduler_place.fit`)."""

    weights: Mapping[str, float] = field(default_factory=lambda: {DEFAULT_WEIGHER: 1.0})
    vcpu_ratio: float = 1.0
    memory_ratio: float = 1.0
    max_vms_per_node: int | None = None
    memory_per_vcpu: float = MEMORY_PER_VCPU

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> SchedulerConfig:
        """Check ``config`` (the plugin's table); raise :class:`ValueError` naming the bad key."""
        unknown = sorted(set(config) - set(KEYS))
        if unknown:
            raise ValueError(
                f"scheduler: unknown setting(s) {', '.join(unknown)} (known: {', '.join(KEYS)})"
            )
        limit = config.get("max_vms_per_node")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ValueError(f"scheduler: max_vms_per_node must be an integer ≥ 1, not {limit!r}")
        return cls(
            weights=_weights(config),
            vcpu_ratio=_ratio(config, "vcpu_ratio"),
            memory_ratio=_ratio(config, "memory_ratio"),
            max_vms_per_node=limit,
            memory_per_vcpu=_ratio(config, "memory_per_vcpu", MEMORY_PER_VCPU),
        )

    def describe_weights(self) -> str:
        """``spread`` for one weigher, ``spread*1.0 + balanced*0.5`` for several."""
        if len(self.weights) == 1:
            return next(iter(self.weights))
        return " + ".join(f"{name}*{weight:g}" for name, weight in self.weights.items())
