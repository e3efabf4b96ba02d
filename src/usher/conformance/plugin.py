"""The pytest plugin of ``usher driver-check``: which driver, at which site, with which
options (``--usher-driver``, ``--usher-site``, ``--usher-driver-option``); it provides the
``driver_site`` fixture the suite runs on."""

from __future__ import annotations

import json

import pytest

from usher.conformance.site import DriverSite, load_site


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("usher", "Usher driver conformance")
    group.addoption("--usher-driver", help="the driver's usher.drivers entry-point name")
    group.addoption("--usher-site", help="module:object, a usher.conformance.DriverSite")
    group.addoption(
        "--usher-driver-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a driver option for every host (VALUE read as JSON if it parses)",
    )


def parse_options(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` items as the LNM reads its ``--driver-option``."""
    options: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise pytest.UsageError(f"driver option {item!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


@pytest.fixture(scope="session")
def driver_site(pytestconfig: pytest.Config) -> DriverSite:
    driver = pytestconfig.getoption("usher_driver")
    if not driver:
        raise pytest.UsageError("name the driver to check: --usher-driver NAME")
    options = parse_options(pytestconfig.getoption("usher_driver_option"))
    return load_site(driver, pytestconfig.getoption("usher_site"), options)
