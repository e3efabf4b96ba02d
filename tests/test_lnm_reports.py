"""What an LNM tells the controller now linked about a command that outlived the link it
came on: the VM's state, or that the node no longer has it (a destroy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from usher import wire
from usher.lnm.agent import LNM, LNMConfig
from usher.model import VMSpec
from usher.vmm.base import Guest
from usher.vmm.fake import FakeDriver


class Link:
    """A WebSocket stand-in that keeps what is sent on it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, text: str) -> None:
        self.sent.append(wire.loads(text))


async def test_a_destroy_that_outlived_its_link_is_reported_gone(tmp_path: Path) -> None:
    driver = FakeDriver()
    await driver.open()
    lnm = LNM(LNMConfig("ws://ctrl", "node-1", tmp_path / "cred", 8, 8192), driver)
    guest = Guest(id="vm-1", name="one", spec=VMSpec(vcpus=1, memory_mb=256))
    await driver.start(guest)
    old, new = Link(), Link()
    lnm._ws = new  # type: ignore[assignment]  # the link the next controller dialled in on
    await lnm._run_command(old, {"id": "cmd-1", "action": "destroy", "vm_id": "vm-1"})  # type: ignore[arg-type]
    assert old.sent[0]["type"] == "reply" and old.sent[0]["ok"]  # to a controller gone
    assert new.sent == [{"type": "gone", "vm_id": "vm-1"}]

    await driver.start(guest)
    await lnm._run_command(old, {"id": "cmd-2", "action": "pause", "vm_id": "vm-1"})  # type: ignore[arg-type]
    assert new.sent[-1] == {"type": "state", "vm_id": "vm-1", "state": "paused", "reason": None}
    await driver.close()
