"""Webhooks: POST chosen events as JSON to a URL.

Config::

    [plugins.webhooks]
    hooks = [
      {events = ["start", "start_failure"], url = "https://hooks.example.org/usher", timeout = 5},
      {events = ["node_lost"], url = "https://pager.example.org/in", headers = {X-Key = "…"}},
    ]

The body is the event (``{"id", "name", "time", "principal", "vm_id", "node",
"operation_id", "data"}``); ``headers`` are added to the request; ``timeout`` is in seconds
(default 5). Posts run in the background. A failure (no answer in time, a transport error, a
status other than 2xx) is logged and published as a ``webhook_failure`` event with
``data = {"url", "event", "error"}``. Webhooks only notify: ``<op>_request`` here is the event
of a request that passed its hooks, and a webhook cannot veto it (a script can).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from usher.model import Event
from usher.plugin import PluginContext, hookimpl
from usher.plugins.hooktable import HookEntry, parse_hooks


class Webhooks:
    """The ``webhooks`` plugin."""

    ctx: PluginContext
    http: httpx.AsyncClient

    def __init__(self) -> None:
        self.entries: list[HookEntry] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.entries = parse_hooks("webhooks", config, "url")
        self.http = httpx.AsyncClient()

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        """Start the posts that want ``event`` and return: each has its own timeout."""
        for entry in self.entries:
            if entry.wants(event.name):
                task = asyncio.create_task(self._post(entry, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _post(self, entry: HookEntry, event: Event) -> None:
        url = str(entry.settings["url"])
        try:
            response = await self.http.post(
                url,
                content=event.model_dump_json(),
                headers={"Content-Type": "application/json", **entry.settings.get("headers", {})},
                timeout=entry.timeout,
            )
            error = None if response.is_success else f"answered {response.status_code}"
        except httpx.TimeoutException:
            error = f"no answer within {entry.timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            return
        self.ctx.logger("webhooks").warning("webhook %s failed on %s: %s", url, event.name, error)
        if event.name != "webhook_failure":  # never loop on a failing failure hook
            await self.ctx.emit(
                "webhook_failure",
                vm_id=event.vm_id,
                operation_id=event.operation_id,
                data={"url": url, "event": event.name, "error": error},
            )

    @hookimpl
    async def usher_shutdown(self) -> None:
        """Let running posts finish (each is bounded by its timeout), then close."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()
