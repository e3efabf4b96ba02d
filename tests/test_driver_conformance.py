"""The packaged driver conformance suite (:mod:`usher.conformance`) on Usher's drivers and
the example out-of-tree one. A new driver's site: one :class:`DriverSite` object and one
entry in ``SITES`` below."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import example_driver
from usher.conformance import FAKE, QEMU, DriverSite, crash
from usher.conformance.suite import *  # noqa: F403 - the suite's tests, collected here
from usher.model import Image
from usher.vmm.base import Driver, DriverError, load_driver


@dataclass
class MemorySite(DriverSite):
    """The example ``memory`` driver: guests in a table, no image, no heartbeat; its
    ``crash`` ends one."""

    ready: str | None = None
    heartbeat: str | None = None
    slow: dict[str, Any] = field(default_factory=lambda: {"boot_seconds": 0.2})

    def image(self, storage: Path) -> Image | None:
        return None

    async def end_guest(self, driver: Driver, vm_id: str, *, attached: bool) -> None:
        await crash(driver, vm_id, attached=attached)


MEMORY = MemorySite(example_driver.NAME)

SITES = {"fake": FAKE, "qemu": QEMU, example_driver.NAME: MEMORY}


@pytest.fixture(scope="session")
def example_installed() -> None:
    example_driver.install()


@pytest.fixture(params=list(SITES))
def driver_site(request: pytest.FixtureRequest) -> DriverSite:
    if request.param == example_driver.NAME:
        request.getfixturevalue("example_installed")
    return SITES[request.param]


def test_the_memory_site_has_no_image(tmp_path: Path) -> None:
    image: Image | None = MEMORY.image(tmp_path)
    assert image is None


def test_load_driver_names_the_installed_ones_for_an_unknown_name() -> None:
    with pytest.raises(DriverError, match=r"unknown VMM driver 'nope'; installed drivers: .*fake"):
        load_driver("nope")
