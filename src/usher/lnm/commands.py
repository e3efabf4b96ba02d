"""The commands a controller sends an LNM, each turned into a call of its driver, and the
driver's answer into a JSON-ready result."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Any

from usher.bounds import MAX_DATA_DISKS, MAX_DISK_GB, NAME_RE
from usher.vmm.base import DomainInfo, Driver, DriverError, Guest

CONSOLE_REPLY = 256 * 1024
"""Most console bytes one ``console`` reply carries (ask again from its ``next``)."""
MAX_OFFSET = 2**53
STAGING = re.compile(r"\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}")
"""A staging directory of the image catalogue, as the controller names it."""
MAX_CONSOLE_INPUT = 4096
"""Most bytes one ``console_input`` command types into a VM's console."""


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
            "console": lambda: self._console(vm(), args),
            "console_input": lambda: d.console_write(vm(), _console_input(args)),
            "snapshot_create": lambda: self._snapshots(vm(), "create", args),
            "snapshot_list": lambda: self._snapshots(vm(), "list", args),
            "snapshot_revert": lambda: self._snapshots(vm(), "revert", args),
            "snapshot_delete": lambda: self._snapshots(vm(), "delete", args),
            "disk_usage": lambda: self._disk_usage(vm()),
            "clone_disks": lambda: d.clone_disks(
                vm(), _name(args, "new_vm_id"), snapshot=_snapshot_arg(args)
            ),
            "export_disk": lambda: self._export_disk(vm(), args),
            "resize_disk": lambda: d.resize_disk(
                vm(),
                _bounded_int(args, "disk", 0, MAX_DATA_DISKS),
                _bounded_int(args, "size_gb", 1, MAX_DISK_GB),
            ),
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
        if isinstance(answer, dict):
            return answer
        if answer is not None and hasattr(answer, "model_dump"):
            return answer.model_dump(mode="json")
        return {}

    async def _console(self, vm_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """The ``console`` command: output from ``offset`` on, or the last ``tail`` bytes;
        ``{"offset", "next", "data"}``. A reply never ends inside a UTF-8 character: its last
        incomplete one comes in the next reply, so output read in pieces decodes as a whole."""
        if "tail" in args:
            tail = args["tail"]
            if (
                isinstance(tail, bool)
                or not isinstance(tail, int)
                or not 0 <= tail <= CONSOLE_REPLY
            ):
                raise DriverError(f"console tail must be 0 to {CONSOLE_REPLY} bytes")
            offset = max(0, await self.driver.console_end(vm_id) - tail)
        else:
            offset = _offset(args)
        chunk = _whole_characters(
            (await self.driver.console_log(vm_id, offset=offset))[:CONSOLE_REPLY]
        )
        return {
            "offset": offset,
            "next": offset + len(chunk),
            "data": chunk.decode("utf-8", "replace"),
        }

    async def _snapshots(self, vm_id: str, what: str, args: dict[str, Any]) -> dict[str, Any]:
        """The ``snapshot_*`` commands: each answers with the VM's snapshots afterwards
        (``{"snapshots": [...]}``), so the controller records what the disks hold."""
        d = self.driver
        if what == "create":
            name = _name(args, "name")
            if name.isdigit():  # qemu-img would read it as a snapshot's id
                raise DriverError("a snapshot's name is not all digits")
            await d.snapshot_create(vm_id, name)
        elif what == "revert":
            await d.snapshot_revert(vm_id, _name(args, "name"))
        elif what == "delete":
            await d.snapshot_delete(vm_id, _name(args, "name"))
        snapshots = await d.snapshot_list(vm_id)
        return {"snapshots": [snap.model_dump(mode="json") for snap in snapshots]}

    async def _disk_usage(self, vm_id: str) -> dict[str, Any]:
        return {"bytes": await self.driver.disk_usage(vm_id)}

    async def _export_disk(self, vm_id: str, args: dict[str, Any]) -> dict[str, Any]:
        staging = args.get("staging")
        if not (isinstance(staging, str) and STAGING.fullmatch(staging)):
            raise DriverError("export_disk needs the name of a staging directory (.<name>)")
        size = await self.driver.export_disk(vm_id, staging, snapshot=_snapshot_arg(args))
        return {"size_bytes": size}

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


def _name(args: dict[str, Any], key: str) -> str:
    """A name argument (a snapshot's, a new VM's id), as :data:`usher.bounds.NAME_RE`."""
    value = args.get(key)
    if not (isinstance(value, str) and NAME_RE.fullmatch(value)):
        raise DriverError(f"{key} must be a name (letters, digits, '.', '_', '-')")
    return value


def _bounded_int(args: dict[str, Any], key: str, least: int, most: int) -> int:
    """An integer argument from ``least`` to ``most``."""
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise DriverError(f"{key} must be an integer from {least} to {most}")
    return value


def _snapshot_arg(args: dict[str, Any]) -> str | None:
    """The optional ``snapshot`` argument of a copy of disks."""
    return None if args.get("snapshot") is None else _name(args, "snapshot")


def _console_input(args: dict[str, Any]) -> bytes:
    """The ``data`` argument of a ``console_input`` command: base64, at most
    :data:`MAX_CONSOLE_INPUT` bytes once decoded."""
    data = args.get("data")
    if not isinstance(data, str) or len(data) > (MAX_CONSOLE_INPUT + 2) // 3 * 4:
        raise DriverError(f"console input must be base64 of at most {MAX_CONSOLE_INPUT} bytes")
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise DriverError("console input must be base64") from None
    if len(decoded) > MAX_CONSOLE_INPUT:
        raise DriverError(f"console input must be base64 of at most {MAX_CONSOLE_INPUT} bytes")
    return decoded


def _whole_characters(chunk: bytes) -> bytes:
    """``chunk`` without an incomplete UTF-8 character at its end (at most 3 bytes)."""
    for back in range(1, min(4, len(chunk)) + 1):
        byte = chunk[-back]
        if byte < 0x80:
            return chunk
        if byte >= 0xC0:  # the lead byte of the last character: is it all there?
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return chunk if back >= length else chunk[:-back]
    return chunk


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
