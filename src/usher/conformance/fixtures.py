"""The fixtures of the conformance suite. ``driver_site`` (the :class:`DriverSite` under
test) comes from the plugin (:mod:`usher.conformance.plugin`) or from the test module that
imports the suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from usher.conformance.hosts import Hosts
from usher.conformance.site import DriverSite
from usher.model import Image

_IMAGES: dict[tuple[Path, str], tuple[Path, Image | None]] = {}
"""The shared storage of each driver, with its guests' image, built once per run."""


@pytest.fixture
async def hosts(
    request: pytest.FixtureRequest,
    driver_site: DriverSite,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Hosts]:
    """Hosts ``a`` and ``b`` of ``driver_site`` (open them with ``await hosts.open(…)``);
    every VM left is destroyed after the test. A test the site lists in ``known_failures``
    is an xfail."""
    name = request.node.originalname
    method = getattr(request.node, "callspec", None)
    method = method.params.get("method") if method is not None else None
    reason = driver_site.known_failures.get(f"{name}[{method}]" if method else name)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))
    key = (tmp_path_factory.getbasetemp(), driver_site.driver)
    if key not in _IMAGES:
        storage = tmp_path_factory.mktemp(f"storage-{driver_site.driver}")
        _IMAGES[key] = (storage, driver_site.image(storage))
    storage, image = _IMAGES[key]
    found = Hosts(driver_site, tmp_path, storage, image)
    yield found
    await found.close_all()
