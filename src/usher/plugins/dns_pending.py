"""The ``dns`` plugin's ledger: what each VM has in DNS, and the updates not yet made.

Two values of plugin data, changed together in one transaction (``ctx.atomically``):

* ``published``: VM id → ``{"fqdn", "addresses"}``, the names the plugin has asked for
  (made or pending), so a destroy or a rename knows what to take away after the VM's
  record is gone or changed;
* ``pending``: one entry per record set (``"A name."``, ``"PTR name."``) holding what that
  set should be (``values``; empty: removed), a sequence number, how often it failed and
  when it is next due. A later change of the same set replaces its entry, so a removal
  supersedes an add not yet made; an update that was under way while it was replaced is
  not settled by its success (its sequence number no longer matches), and the newer
  entry runs next.

Entries survive a controller restart; a restart makes all of them due at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from usher.plugin import PluginContext, PluginData

PLUGIN = "dns"


@dataclass(frozen=True)
class Change:
    """A record set as it should be: ``values`` empty removes it."""

    rdtype: str  # "A", "AAAA" or "PTR"
    name: str  # absolute, lower case
    values: tuple[str, ...]
    vm_id: str | None

    @property
    def key(self) -> str:
        return f"{self.rdtype} {self.name}"


@dataclass(frozen=True)
class Names:
    """What one VM has in DNS: its name and addresses."""

    fqdn: str  # absolute
    addresses: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"fqdn": self.fqdn, "addresses": list(self.addresses)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Names:
        return cls(value["fqdn"], tuple(value["addresses"]))


class Ledger:
    """The published names and pending updates of the ``dns`` plugin, in plugin data."""

    def __init__(self, ctx: PluginContext) -> None:
        self.ctx = ctx

    async def set_names(
        self,
        vm_id: str,
        names: Names | None,
        changes: Callable[[Names | None, Names | None], list[Change]],
    ) -> tuple[list[Change], str | None]:
        """Record that ``vm_id`` now has ``names`` (None: nothing) and queue the updates
        that ``changes(old, new)`` derives from what it had; returns them, and the VM that
        has the name already if another does (then ``vm_id`` gets no address under it: two
        VM names may differ only in case). Nothing is written when its names are as they
        were (every start of a VM asks again)."""
        if await self.published(vm_id) == names:
            return [], None

        async def apply(data: PluginData) -> tuple[list[Change], str | None]:
            published: dict[str, Any] = await data.get("published", {})
            old = Names.from_json(published[vm_id]) if vm_id in published else None
            new, holder = names, None
            if names is not None and names.addresses:
                holder = next(
                    (
                        other
                        for other, value in published.items()
                        if other != vm_id and value["fqdn"] == names.fqdn and value["addresses"]
                    ),
                    None,
                )
                if holder is not None:
                    new = Names(names.fqdn, ())
            made: list[Change] = changes(old, new)
            if new is None:
                published.pop(vm_id, None)
            else:
                published[vm_id] = new.to_json()
            await data.put("published", published)
            if made:
                await _queue(data, made)
            return made, holder if old != new else None

        return await self.ctx.atomically(PLUGIN, apply)

    async def published(self, vm_id: str) -> Names | None:
        value = (await self.ctx.get(PLUGIN, "published", {})).get(vm_id)
        return Names.from_json(value) if value else None

    async def all_published(self) -> dict[str, Names]:
        """The names of every VM, by VM id."""
        published = await self.ctx.get(PLUGIN, "published", {})
        return {vm_id: Names.from_json(value) for vm_id, value in published.items()}

    async def pending(self) -> list[dict[str, Any]]:
        """Every pending entry, oldest change first."""
        entries: dict[str, dict[str, Any]] = await self.ctx.get(PLUGIN, "pending", {})
        return sorted(entries.values(), key=lambda e: e["seq"])

    async def settle(self, *made: dict[str, Any]) -> None:
        """The entries ``made`` were made (or given up): drop each unless a newer change
        replaced it. One write for all: the pending entries are one value, rewritten whole."""
        if not made:
            return

        async def apply(data: PluginData) -> None:
            entries = await data.get("pending", {})
            done = [e["key"] for e in made if entries.get(e["key"], {}).get("seq") == e["seq"]]
            for key in done:
                del entries[key]
            if done:
                await data.put("pending", entries)

        await self.ctx.atomically(PLUGIN, apply)

    async def postpone(
        self, failed: list[dict[str, Any]], delay: Callable[[int], float]
    ) -> list[dict[str, Any]]:
        """Count a failed try of each of ``failed`` and make it due after ``delay(attempts)``
        seconds; returns the entries as now kept (those not replaced meanwhile)."""

        async def apply(data: PluginData) -> list[dict[str, Any]]:
            entries = await data.get("pending", {})
            kept = []
            for entry in failed:
                now = entries.get(entry["key"])
                if now is None or now["seq"] != entry["seq"]:
                    continue
                now["attempts"] += 1
                now["due"] = time.time() + delay(now["attempts"])
                kept.append(now)
            await data.put("pending", entries)
            return kept

        return await self.ctx.atomically(PLUGIN, apply)


async def _queue(data: PluginData, changes: list[Change]) -> None:
    entries: dict[str, dict[str, Any]] = await data.get("pending", {})
    seq: int = await data.get("seq", 0)
    now = time.time()
    for change in changes:
        seq += 1
        entries[change.key] = {
            "key": change.key,
            "type": change.rdtype,
            "name": change.name,
            "values": list(change.values),
            "vm_id": change.vm_id,
            "seq": seq,
            "attempts": 0,
            "due": now,
        }
    await data.put("pending", entries)
    await data.put("seq", seq)
