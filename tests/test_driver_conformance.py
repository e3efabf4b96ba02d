"""The packaged driver conformance suite (:mod:`usher.conformance`) on Usher's drivers and
the example out-of-tree one. A new driver's site: one :class:`DriverSite` object and one
entry in ``SITES`` below."""

from __future__ import annotations

from pathlib import Path

import pytest

import example_driver
from usher.conformance import FAKE, QEMU, DriverSite
from usher.conformance.suite import *  # noqa: F403 - the suite's tests, collected here
from usher.model import Image
from usher.vmm.base import DriverError, load_driver

MEMORY = DriverSite(
    example_driver.NAME,
    ready=None,
    heartbeat=None,
    slow={"boot_seconds": 0.2},
    known_failures={
        "test_a_restarted_lnm_finds_its_vms_in_their_true_states": "its guests live in the "
        "driver object: a new one on the same state dir knows none of them"
    },
)
"""The example ``memory`` driver: guests in memory, no image, no heartbeat."""
MEMORY.image = lambda storage: None  # type: ignore[method-assign]

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
