"""What a plugin may use of the controller: the public face handed to ``usher_configure``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usher.ctrl.config import Settings
    from usher.ctrl.events import EventBus
    from usher.ctrl.store import Store
    from usher.model import Event


@dataclass
class PluginContext:
    """Handed to every plugin at start: the store, the event bus and the settings."""

    store: Store
    bus: EventBus
    settings: Settings

    def logger(self, plugin: str) -> logging.Logger:
        return logging.getLogger(f"usher.plugin.{plugin}")

    async def emit(self, name: str, **fields: Any) -> Event:
        """Fire an event of the plugin's own (it reaches the stream and other plugins)."""
        return await self.bus.emit(name, **fields)

    async def get(self, plugin: str, key: str, default: Any = None) -> Any:
        """Read a value a plugin stored under ``key``."""
        return await self.store.plugin_get(plugin, key, default)

    async def put(self, plugin: str, key: str, value: Any) -> None:
        """Store a JSON value for a plugin; it survives controller restarts."""
        await self.store.plugin_set(plugin, key, value)
