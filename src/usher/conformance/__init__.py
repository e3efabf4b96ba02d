"""The driver conformance suite: the contract of :mod:`usher.vmm.base`, checked on a real
driver. Usher's own drivers pass it in Usher's tests; a site checks its own driver with::

    pip install 'usher[conformance]'
    usher driver-check NAME [--site module:object] [--driver-option KEY=JSON ...] [-- PYTEST ARGS]

The suite opens the driver ``NAME`` (an ``usher.drivers`` entry point) on two hosts, ``a``
and ``b``, sharing one storage directory, as LNMs do, and checks every method: the states
each leaves, refusals (``UnknownVM``, ``InvalidTransition``, ``InsufficientCapacity``, a
``DriverError`` for a capability not declared), an LNM restart, ends nobody asked for, the
console, live migrations (whole, failed, called off, settled), disks and snapshots, and every
method cancelled at a few points in time. A :class:`DriverSite` says how to run the driver
at the site (options, image, how to tell a guest is up and alive, how to end one behind the
driver's back: :func:`crash` does it through a driver's own ``crash(vm_id)``); the built-in
ones (:data:`SITES`) are for ``fake`` and ``qemu``, and any other driver gets a plain
:class:`DriverSite` unless ``--site`` names one.

Modules: :mod:`~usher.conformance.site` (the sites), :mod:`~usher.conformance.hosts` (the
harness), ``checks_*`` (the tests), :mod:`~usher.conformance.suite` (all of them, the module
pytest collects), :mod:`~usher.conformance.plugin` (the pytest options), and
:mod:`~usher.conformance.run` (the command).
"""

from usher.conformance.site import FAKE, QEMU, SITES, CannotEnd, DriverSite, crash, load_site

__all__ = ["FAKE", "QEMU", "SITES", "CannotEnd", "DriverSite", "crash", "load_site"]
