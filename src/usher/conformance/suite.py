"""The conformance suite as one pytest module: every check, and the ``hosts`` fixture.

Run it with ``usher driver-check NAME`` (:mod:`usher.conformance.run`), or collect it in a
test module of your own that imports it and defines a ``driver_site`` fixture::

    from usher.conformance.suite import *  # noqa: F403

    @pytest.fixture
    def driver_site() -> DriverSite:
        return DriverSite("mydriver")
"""

from usher.conformance.checks_cancel import *  # noqa: F403
from usher.conformance.checks_console import *  # noqa: F403
from usher.conformance.checks_disks import *  # noqa: F403
from usher.conformance.checks_lifecycle import *  # noqa: F403
from usher.conformance.checks_migration import *  # noqa: F403
from usher.conformance.fixtures import hosts  # noqa: F401
