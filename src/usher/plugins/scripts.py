"""Scripts: run an executable on chosen events, the event as JSON on its stdin.

Config::

    [plugins.scripts]
    hooks = [
      {events = ["start", "destroy"], run = "/usr/local/bin/on-vm-change", timeout = 5},
      {events = ["stop_request"], run = ["/usr/local/bin/may-stop", "--strict"]},
    ]

``run`` is a path or an argv list; ``timeout`` is in seconds (default 5). The environment
gets ``USHER_EVENT`` (the event name).

* ``request`` and ``<op>_request`` (e.g. ``stop_request``) run *before* the operation, with
  ``{"name", "time", "principal", "data": <the request>}`` on stdin: a non-zero exit vetoes
  the request, and what the script printed (stderr, else stdout) is the reason the user sees.
  A script that cannot run or times out vetoes too (a broken policy must not let requests
  through).
* Any other name runs after the fact with the event (``{"name", "time", "principal",
  "vm_id", "node", "operation_id", "data", …}``), in the background. A failure (non-zero
  exit, timeout, cannot run) is logged and published as a ``script_failure`` event with
  ``data = {"script", "event", "error", "output"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from usher.model import Event, OpRequest, now
from usher.plugin import PluginContext, Veto, hookimpl
from usher.plugins.hooktable import HookEntry, parse_hooks

OUTPUT_LIMIT = 2000


@dataclass
class ScriptResult:
    """How a script run went: ``error`` is None when it exited 0."""

    error: str | None
    output: str


def _argv(entry: HookEntry) -> list[str]:
    run = entry.settings["run"]
    return [str(a) for a in run] if isinstance(run, list) else [str(run)]


async def run_script(argv: list[str], payload: dict[str, Any], timeout: float) -> ScriptResult:
    """Run ``argv`` with ``payload`` as JSON on stdin, killed after ``timeout`` seconds."""
    env = {**os.environ, "USHER_EVENT": str(payload.get("name", ""))}
    # stdin is a file, not a pipe: a script that exits without reading it is no error
    with tempfile.TemporaryFile() as stdin:
        stdin.write(json.dumps(payload).encode())
        stdin.seek(0)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            return ScriptResult(f"cannot run {argv[0]}: {exc.strerror or exc}", "")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return ScriptResult(f"{argv[0]} timed out after {timeout:g} s", "")
    output = (err.decode(errors="replace").strip() or out.decode(errors="replace").strip())[
        :OUTPUT_LIMIT
    ]
    if proc.returncode != 0:
        return ScriptResult(f"{argv[0]} exited with status {proc.returncode}", output)
    return ScriptResult(None, output)


class Scripts:
    """The ``scripts`` plugin."""

    ctx: PluginContext

    def __init__(self) -> None:
        self.entries: list[HookEntry] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @hookimpl
    def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.entries = parse_hooks("scripts", config, "run")

    @hookimpl
    async def request(self, request: OpRequest) -> None:
        payload_data = request.model_dump(mode="json")
        for name in ("request", f"{request.kind.value}_request"):
            for entry in self.entries:
                if not entry.wants(name):
                    continue
                payload = {
                    "name": name,
                    "time": now(),
                    "principal": request.principal.name,
                    "data": payload_data,
                }
                result = await run_script(_argv(entry), payload, entry.timeout)
                if result.error is not None:
                    raise Veto(result.output or result.error)

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        """Start the scripts that want ``event`` and return: each has its own timeout."""
        if event.name == "request" or event.name.endswith("_request"):
            return  # those ran as request hooks, before the operation
        for entry in self.entries:
            if entry.wants(event.name):
                task = asyncio.create_task(self._notify(entry, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _notify(self, entry: HookEntry, event: Event) -> None:
        argv = _argv(entry)
        result = await run_script(argv, event.model_dump(mode="json"), entry.timeout)
        if result.error is None:
            return
        self.ctx.logger("scripts").warning(
            "script %s failed on event %s: %s %s", argv[0], event.name, result.error, result.output
        )
        if event.name != "script_failure":  # never loop on a failing failure script
            await self.ctx.emit(
                "script_failure",
                vm_id=event.vm_id,
                operation_id=event.operation_id,
                data={
                    "script": argv[0],
                    "event": event.name,
                    "error": result.error,
                    "output": result.output,
                },
            )

    @hookimpl
    async def usher_shutdown(self) -> None:
        """Let running scripts finish (each is bounded by its timeout)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)
