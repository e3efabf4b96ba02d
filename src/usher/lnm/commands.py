"""The commands a controller sends an LNM, each turned into a call of its driver, and the
driver's answer into a JSON-ready result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from usher.vmm.base import DomainInfo, Driver, DriverError, Guest

CONSOLE_REPLY = 256 * 1024
"""Most console bytes one ``console`` reply carries (ask again from its ``next``)."""
MAX_OFFSET = 2**53


class Commands:
    """Runs commands through ``driver`` for the node ``node``; ``cancel`` is how the
    ``cancel`` command calls off another command, by its id."""

    def __init__(
        self,
        driver: Driver,
        *,
        node: str,
        migration_host: str,
        cancel: Callable[[str], Awaitable[dict[str, Any]]],
    ) -> None:
        self.driver = driver
        self._node = node
        self._migration_host = migration_host
        self._cancel = cancel

    async def execute(
        self,
        action: str,
        vm_id: str | None,
        guest: dict[str, Any] | None,
        args: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """Run one controller command through the driver; the answer is JSON-ready."""
        args = args or {}
        d = self.driver

        def need_guest() -> Guest:
            if guest is None:
                raise DriverError(f"{action} needs the VM's description")
            return Guest.model_validate(guest)

        def vm() -> str:
            if not vm_id:
                raise DriverError(f"{action} needs a VM id")
            return vm_id

        def seconds(key: str, default: float | None) -> float | None:
            return _seconds(action, args, key, default)

        handlers: dict[str, Callable[[], Any]] = {
            "start": lambda: d.start(need_guest()),
            "stop": lambda: d.stop(
                vm(), timeout=seconds("timeout", None), hard=args.get("hard") is True
            ),
            "destroy": lambda: d.destroy(vm()),
            "fence": lambda: d.fence(vm()),
            "pause": lambda: d.pause(vm()),
            "resume": lambda: d.resume(vm()),
            "reboot": lambda: d.reboot(vm()),
            "cycle": lambda: d.cycle(need_guest()),
            "info": lambda: d.info(vm()),
            "prepare_incoming": lambda: d.prepare_incoming(need_guest(), self._migration_host),
            "migrate": lambda: d.migrate(
                vm(), str(args.get("uri"))[:1000], timeout=seconds("timeout", 120) or 120.0
            ),
            "finish_incoming": lambda: d.finish_incoming(vm()),
            "abort_incoming": lambda: d.abort_incoming(vm()),
            "settle_incoming": lambda: self._settle_incoming(vm()),
            "console": lambda: d.console_log(vm(), offset=_offset(args)),
            "cancel": lambda: self._cancel(str(args.get("command"))),
        }
        handler = handlers.get(action)
        if handler is None:
            raise DriverError(f"node {self._node} does not know the command {action!r}")
        answer = await handler()
        if isinstance(answer, DomainInfo):
            return answer.model_dump(mode="json")
        if action == "prepare_incoming":
            return {"uri": answer}
        if action == "console":
            chunk = answer[:CONSOLE_REPLY]
            return {"data": chunk.decode("utf-8", "replace"), "next": _offset(args) + len(chunk)}
        if isinstance(answer, dict):
            return answer
        if answer is not None and hasattr(answer, "model_dump"):
            return answer.model_dump(mode="json")
        return {}

    async def _settle_incoming(self, vm_id: str) -> dict[str, Any]:
        """The ``settle_incoming`` command: ``{"settled": "running", "vm": <domain>}`` or
        ``{"settled": "dropped"}``."""
        info = await self.driver.settle_incoming(vm_id)
        if info is None:
            return {"settled": "dropped"}
        return {"settled": "running", "vm": info.model_dump(mode="json")}


def _offset(args: dict[str, Any]) -> int:
    """The ``offset`` argument of a ``console`` command."""
    value = args.get("offset", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
        raise DriverError(f"console offset must be 0 to {MAX_OFFSET}")
    return value


def _seconds(action: str, args: dict[str, Any], key: str, default: float | None) -> float | None:
    """An argument in seconds (0 to a week), or ``default`` if absent."""
    value = args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DriverError(f"{action}: {key} must be a number of seconds")
    if not 0 <= value <= 86400 * 7:
        raise DriverError(f"{action}: {key} must be 0 to 604800 seconds")
    return float(value)
