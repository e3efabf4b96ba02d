"""``usher driver-check``: run the conformance suite on one installed driver."""

from __future__ import annotations

from pathlib import Path

SUITE = Path(__file__).with_name("suite.py")


def pytest_args(
    driver: str, site: str | None, options: tuple[str, ...], extra: tuple[str, ...]
) -> list[str]:
    """The arguments of the pytest run that checks ``driver``."""
    args = [str(SUITE), "-p", "usher.conformance.plugin", "--usher-driver", driver]
    args += ["-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function"]
    if site:
        args += ["--usher-site", site]
    for option in options:
        args += ["--usher-driver-option", option]
    if extra[:1] == ("--",):
        extra = extra[1:]
    return [*args, *extra]


def run(driver: str, site: str | None, options: tuple[str, ...], extra: tuple[str, ...]) -> int:
    """Run the suite; pytest's exit status."""
    import pytest

    return int(pytest.main(pytest_args(driver, site, options, extra)))
