"""Conformance: the serial console (capabilities ``console`` and ``console_input``)."""

from __future__ import annotations

import re
import uuid

from usher.conformance.hosts import Hosts, console, declares, refused, states, wait_console, wait_up
from usher.model import Capability, VMState
from usher.vmm.base import DriverError, InvalidTransition, UnknownVM


async def test_the_console_reads_on_from_an_offset(hosts: Hosts) -> None:
    driver = await hosts.open()
    guest = hosts.guest("talks")
    await driver.start(guest)
    if not declares(driver, Capability.CONSOLE):
        for method in (driver.console_log, driver.console_end):
            with refused(DriverError):
                await method(guest.id)
        return
    await wait_up(hosts.site, driver, guest)
    whole = (await console(driver, guest.id)).encode()
    assert whole, "nothing on the console of a guest that is up"
    later = (await console(driver, guest.id, 3)).encode()
    assert later.startswith(whole[3:]), "the console from offset 3 is not the rest of it"
    end = await driver.console_end(guest.id)
    assert end >= len(whole)
    await driver.stop(guest.id, hard=True)  # a stopped VM's console is still there
    stopped_end = await driver.console_end(guest.id)
    assert stopped_end >= end
    assert await driver.console_log(guest.id, offset=stopped_end) == b""
    with refused(UnknownVM, "vm-nosuchvm000"):
        await driver.console_log("vm-nosuchvm000")


async def test_console_input_reaches_the_guest_and_changes_nothing_else(hosts: Hosts) -> None:
    site = hosts.site
    driver = await hosts.open()
    guest = hosts.guest("typed")
    await driver.start(guest)
    if not declares(driver, Capability.CONSOLE_INPUT):
        with refused(DriverError):
            await driver.console_write(guest.id, b"echo hi\n")
        assert await states(driver) == {guest.id: VMState.RUNNING}
        return
    await wait_up(site, driver, guest)
    mark = await driver.console_end(guest.id)
    word = f"usher-typed-{uuid.uuid4().hex[:8]}"
    await driver.console_write(guest.id, f"echo {word}\n".encode())
    assert await states(driver) == {guest.id: VMState.RUNNING}
    if site.answers_echo:
        await wait_console(driver, guest.id, rf"(?m)^{re.escape(word)}\r?$", offset=mark)
    await driver.stop(guest.id, hard=True)
    with refused(InvalidTransition, guest.id):
        await driver.console_write(guest.id, b"echo late\n")
    assert await states(driver) == {guest.id: VMState.STOPPED}
