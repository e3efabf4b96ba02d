"""The packaged driver conformance suite (:mod:`usher.conformance`) on the ``libvirt``
driver, against two real libvirt daemons as hosts ``a`` and ``b`` (:mod:`libvirt_site`)."""

from __future__ import annotations

import pytest

from libvirt_hosts import LibvirtPair, libvirt_pair
from libvirt_site import LibvirtSite
from usher.conformance import DriverSite
from usher.conformance.suite import *  # noqa: F403 - the suite's tests, collected here

__all__ = ["libvirt_pair"]


@pytest.fixture(scope="session")
def driver_site(libvirt_pair: LibvirtPair) -> DriverSite:
    return LibvirtSite("libvirt", pair=libvirt_pair)
