"""The request ``kwargs`` the core itself reads, checked before anything is done with them.

Every other key is the plugins' and drivers' business (bounded like any value, see
:mod:`usher.bounds`); these few change what the core does, so a bad one is refused with a
sentence instead of failing half-way.
"""

from __future__ import annotations

from typing import Any

from usher.bounds import BoundsError, is_name, shown
from usher.guest_config import check_ssh_key, check_user_data

MAX_SSH_KEYS = 32
"""Most keys the ``ssh_keys`` kwarg may carry."""

MAX_TIMEOUT = 7 * 86400.0
"""Largest ``timeout`` kwarg (seconds); a step's configured limit bounds it further."""


def check_core_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise :class:`BoundsError` for a core kwarg of the wrong type or out of range:
    ``timeout`` (seconds, 0 to :data:`MAX_TIMEOUT`), ``hard`` (a boolean), ``network`` (a
    name: which networks exist is the site's, see :func:`nic_network`) and
    ``name_prefix``; ``snapshot`` and ``image_name`` (names); for guests that run
    cloud-init, ``user_data`` (the user's own cloud-config or script, see
    :func:`usher.guest_config.check_user_data`) and ``ssh_keys`` (public keys the owner's
    account also logs in with)."""
    timeout = kwargs.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= MAX_TIMEOUT
    ):
        raise BoundsError(
            f"kwarg timeout must be seconds from 0 to {MAX_TIMEOUT:g}, not {shown(timeout)}"
        )
    if "hard" in kwargs and not isinstance(kwargs["hard"], bool):
        raise BoundsError(f"kwarg hard must be true or false, not {shown(kwargs['hard'])}")
    network = kwargs.get("network")
    if network is not None and not (isinstance(network, str) and is_name(network)):
        raise BoundsError(f"kwarg network {shown(network)} is not a valid name")
    prefix = kwargs.get("name_prefix")
    if prefix is not None and not (
        isinstance(prefix, str) and len(prefix) <= 50 and is_name(prefix)
    ):
        raise BoundsError(f"kwarg name_prefix {shown(prefix)} is not a valid name")
    for key in SNAPSHOT_KWARGS:
        value = kwargs.get(key)
        if value is not None and not (isinstance(value, str) and is_name(value)):
            raise BoundsError(f"kwarg {key} {shown(value)} is not a valid name")
    _check_guest_kwargs(kwargs)


SNAPSHOT_KWARGS = ("snapshot", "image_name")
"""The names a snapshot operation, a clone or an image from a VM works on: the snapshot, and
the new image's name (see :mod:`usher.ctrl.engine.snapshots`)."""


def _check_guest_kwargs(kwargs: dict[str, Any]) -> None:
    user_data = kwargs.get("user_data")
    if user_data is not None:
        if not isinstance(user_data, str):
            raise BoundsError("kwarg user_data must be text")
        try:
            check_user_data(user_data)
        except ValueError as exc:
            raise BoundsError(f"kwarg user_data: {exc}") from None
    keys = kwargs.get("ssh_keys")
    if keys is not None:
        if not isinstance(keys, list) or len(keys) > MAX_SSH_KEYS:
            raise BoundsError(f"kwarg ssh_keys must be a list of at most {MAX_SSH_KEYS} keys")
        for index, key in enumerate(keys):
            try:
                check_ssh_key(key if isinstance(key, str) else "")
            except ValueError as exc:
                raise BoundsError(f"kwarg ssh_keys[{index}]: {exc}") from None


def nic_network(kwargs: dict[str, Any], networks: dict[str, str]) -> str:
    """The network a NIC the core makes goes on: the ``network`` kwarg (``default`` if
    none) looked up in the site's ``networks`` (name → what the driver gets: ``default``,
    ``user`` or ``bridge:<name>``). Users choose only among the networks the administrator
    configured; an IP management plugin that answers ``allocate_address`` makes the NICs
    itself (its ranges are its networks)."""
    name = str(kwargs.get("network", "default"))
    if name not in networks:
        raise BoundsError(
            f"there is no network {shown(name)} here; choose one of: {', '.join(networks)}"
        )
    return networks[name]
