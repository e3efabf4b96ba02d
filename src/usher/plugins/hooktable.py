"""The ``hooks`` table shared by the ``scripts`` and ``webhooks`` plugins.

Each entry names the events it runs on and its timeout in seconds, plus what to do::

    hooks = [{events = ["start", "stop_request"], run = "/usr/local/bin/on-start", timeout = 5}]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class HookEntry:
    """One entry of a ``hooks`` list: the events it wants and the entry's own settings."""

    events: frozenset[str]
    timeout: float
    settings: dict[str, Any]

    def wants(self, name: str) -> bool:
        return name in self.events


def parse_hooks(plugin: str, config: dict[str, Any], required: str) -> list[HookEntry]:
    """The ``hooks`` of a plugin's config table; each entry must have ``events`` and
    ``required`` (``run`` or ``url``). Raises ValueError with a message naming the entry."""
    entries: list[HookEntry] = []
    for i, raw in enumerate(config.get("hooks", [])):
        where = f"[plugins.{plugin}] hooks[{i}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a table")
        events = raw.get("events")
        if (
            not events
            or not isinstance(events, list)
            or not all(isinstance(e, str) for e in events)
        ):
            raise ValueError(f"{where} needs events = [...], a list of event names")
        if not raw.get(required):
            raise ValueError(f"{where} needs {required} = ...")
        timeout = float(raw.get("timeout", DEFAULT_TIMEOUT))
        if timeout <= 0:
            raise ValueError(f"{where}: timeout must be positive")
        settings = {k: v for k, v in raw.items() if k not in ("events", "timeout")}
        entries.append(HookEntry(frozenset(events), timeout, settings))
    return entries
