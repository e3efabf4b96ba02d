"""The pieces of the attached console on their own: the LNM's ``console`` and
``console_input`` commands (bad arguments are error replies), the fake guest's shell, and a
session's bounded backlog."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from usher.ctrl.consoles import BACKLOG, TOO_SLOW, Session
from usher.lnm.commands import MAX_CONSOLE_INPUT, Commands
from usher.model import VMSpec
from usher.vmm.base import DriverError, Guest, InvalidTransition
from usher.vmm.fake import FakeDriver
from usher.vmm.fake_console import MAX_LINE, type_into


async def no_cancel(command: str) -> dict[str, Any]:
    return {}


@pytest.fixture
async def commands() -> Commands:
    driver = FakeDriver()
    await driver.open()
    await driver.start(Guest(id="vm-1", name="one", spec=VMSpec()))
    return Commands(driver, node="n", migration_host="127.0.0.1", cancel=no_cancel)


def typed(text: str) -> dict[str, str]:
    return {"data": base64.b64encode(text.encode()).decode()}


async def test_console_input_and_tail(commands: Commands) -> None:
    whole = await commands.execute("console", "vm-1", None, {"offset": 0})
    assert whole["offset"] == 0 and whole["next"] == len(whole["data"].encode())
    assert await commands.execute("console_input", "vm-1", None, typed("echo hi\r")) == {}
    tail = await commands.execute("console", "vm-1", None, {"tail": 6})
    assert tail["data"] == "hi\r\n# " and tail["next"] == tail["offset"] + 6
    empty = await commands.execute("console", "vm-1", None, {"offset": tail["next"]})
    assert empty["data"] == "" and empty["next"] == tail["next"]


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"data": 7},
        {"data": "not base64!"},
        {"data": base64.b64encode(b"x" * (MAX_CONSOLE_INPUT + 1)).decode()},
        {"data": "A" * 100_000},
    ],
)
async def test_bad_console_input_is_refused(commands: Commands, args: dict[str, Any]) -> None:
    with pytest.raises(DriverError, match="console input"):
        await commands.execute("console_input", "vm-1", None, args)


@pytest.mark.parametrize("tail", [-1, 256 * 1024 + 1, "10", True, 1.5])
async def test_bad_console_tail_is_refused(commands: Commands, tail: object) -> None:
    with pytest.raises(DriverError, match="tail"):
        await commands.execute("console", "vm-1", None, {"tail": tail})


async def test_input_for_a_stopped_or_unknown_vm(commands: Commands) -> None:
    await commands.driver.stop("vm-1")
    with pytest.raises(InvalidTransition):
        await commands.execute("console_input", "vm-1", None, typed("x"))
    with pytest.raises(DriverError, match="not on this node"):
        await commands.execute("console_input", "vm-2", None, typed("x"))


async def test_a_reply_never_ends_inside_a_character() -> None:
    driver = FakeDriver()
    await driver.open()
    await driver.start(Guest(id="vm-1", name="one", spec=VMSpec()))
    commands = Commands(driver, node="n", migration_host="h", cancel=no_cancel)
    await driver.console_write("vm-1", "echo é€😀\r".encode())
    end = await driver.console_end("vm-1")
    pieces, offset = "", 0
    while offset < end:  # read it from every offset a character could be cut at
        reply = await commands.execute("console", "vm-1", None, {"offset": offset})
        pieces += reply["data"]
        offset = reply["next"]
        step = await commands.execute("console", "vm-1", None, {"tail": end - offset})
        assert "\ufffd" not in step["data"]
    assert "é€😀\r\n" in pieces and "\ufffd" not in pieces


def test_the_fake_shell() -> None:
    shown, line = type_into("vm", "", "ech\x7fho hi")
    assert (shown, line) == ("ech\b \bho hi", "echo hi")
    shown, line = type_into("vm", line, "\rhostname\nnope\r")
    assert shown == "\r\nhi\r\n# hostname\r\nvm\r\n# nope\r\nsh: nope: not found\r\n# "
    assert line == ""
    shown, line = type_into("vm", "x" * MAX_LINE, "y")
    assert shown == "\a" and len(line) == MAX_LINE
    assert type_into("vm", "half", "\x03") == ("^C\r\n# ", "")


async def test_a_session_that_falls_behind_ends() -> None:
    session = Session("vm-1")
    assert session.offer("a" * (BACKLOG - 1))
    assert session.offer("b")
    assert await asyncio.wait_for(session.take(), 1) == "a" * (BACKLOG - 1) + "b"
    assert session.offer("c" * BACKLOG)
    assert not session.offer("d")
    assert session.done.is_set() and session.ended is not None
    assert session.ended.code == TOO_SLOW and not session.has_output
