"""Typing into real QEMU guests' serial consoles (the ``tiny`` image under TCG, whose console
runs a busybox shell): the answer shows in console.log, across an LNM restart and a live
migration, and the guest never waits on a console nobody reads."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from test_qemu_driver import (
    DriverFactory,
    beat_after,
    console,
    heartbeats,
    make_driver,
    new_guest,
    reports,
    storage,
    tiny,
    wait_for_text,
)
from usher.model import Image
from usher.vmm.base import DriverError, InvalidTransition
from usher.vmm.qemu import QemuDriver

__all__ = ["make_driver", "reports", "storage", "tiny"]  # the fixtures of the driver tests

pytestmark = pytest.mark.timeout(300)


async def ask(driver: QemuDriver, vm_id: str, command: str, answer: str) -> float:
    """Type ``command`` and Enter; seconds until ``answer`` (a regex) shows after it."""
    mark = await driver.console_end(vm_id)
    began = time.monotonic()
    await driver.console_write(vm_id, f"{command}\n".encode())
    await wait_for_text(driver, vm_id, answer, offset=mark, timeout=20)
    return time.monotonic() - began


async def test_a_command_typed_into_the_console_runs(
    make_driver: DriverFactory, tiny: Image
) -> None:
    driver = await make_driver("a")
    guest = new_guest(tiny, "typist")
    await driver.start(guest)
    await wait_for_text(driver, guest.id, r"USHER-READY typist\b")
    took = await ask(driver, guest.id, "echo usher-$((6*7))-answer", r"\busher-42-answer")
    print(f"typed command answered in {took * 1000:.0f} ms")
    await ask(driver, guest.id, "hostname", r"\ntypist\r?\n")
    assert (await driver.console_end(guest.id)) == len(await driver.console_log(guest.id))

    # connected and typing or not, the guest runs on and its whole output is in the log
    beat = await beat_after(driver, guest.id, 0)
    await asyncio.sleep(3)
    newest = await beat_after(driver, guest.id, beat + 1)
    assert heartbeats(await console(driver, guest.id)) == list(range(1, newest + 1))

    # a paused guest reads what was typed once it is resumed; a stopped one takes none
    await driver.pause(guest.id)
    mark = await driver.console_end(guest.id)
    await driver.console_write(guest.id, b"echo after-the-pause\n")
    await driver.resume(guest.id)
    await wait_for_text(driver, guest.id, r"\nafter-the-pause", offset=mark, timeout=20)
    await driver.stop(guest.id, hard=True)
    with pytest.raises(InvalidTransition):
        await driver.console_write(guest.id, b"echo nobody\n")


async def test_typing_goes_on_after_an_lnm_restart_and_a_migration(
    make_driver: DriverFactory, tiny: Image
) -> None:
    source = await make_driver("a")
    guest = new_guest(tiny, "mover")
    await source.start(guest)
    await wait_for_text(source, guest.id, r"USHER-READY mover\b")
    await ask(source, guest.id, "echo before-restart", r"\nbefore-restart")
    await source.close()  # the LNM goes away: its console connection with it

    again = await make_driver("a")
    await asyncio.sleep(2)  # the guest prints on with nobody connected
    await ask(again, guest.id, "echo after-restart", r"\nafter-restart")

    target = await make_driver("b")
    uri = await target.prepare_incoming(guest, "127.0.0.1")
    with pytest.raises(DriverError):  # not running there yet
        await target.console_write(guest.id, b"echo too-early\n")
    await again.migrate(guest.id, uri, timeout=60)
    await target.finish_incoming(guest.id)
    await ask(target, guest.id, "echo after-migration", r"\nafter-migration")
    text = await console(target, guest.id)
    assert text.count("USHER-READY") == 1, "the guest rebooted"
    assert all(word in text for word in ("before-restart", "after-restart", "after-migration"))
    assert not os.path.exists(os.path.join(str(again.state_dir), "vms", guest.id))
