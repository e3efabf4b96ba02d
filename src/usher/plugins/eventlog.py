"""Built-in event log: persists events so that ``GET /v1/events`` can list them.

Config (``[plugins.eventlog]``): ``skip`` lists event names not to keep (default: ``usage``,
which LNMs send every few seconds).
"""

from __future__ import annotations

from typing import Any

from usher.model import Event
from usher.plugin import PluginContext, hookimpl


class EventLog:
    ctx: PluginContext
    skip: frozenset[str] = frozenset({"usage"})

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.skip = frozenset(config.get("skip", self.skip))

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        if event.name not in self.skip:
            await self.ctx.record_events([event])
