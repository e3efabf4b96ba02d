"""Real libvirt daemons for tests (:mod:`usher.vmm.libvirt_daemon`): one on 127.0.0.1, or a
pair, each in a network namespace of its own, as two hosts."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import pytest

from netns import two_hosts
from usher.vmm.libvirt_daemon import LibvirtHost, start_libvirt_host

PAIR_PREFIX = "usher-lv"
PAIR_SUBNETS = itertools.count(21)
"""The third octet of each :func:`libvirt_pair`'s subnet, ``10.213.N`` (other tests use
10.213.7 and 10.213.9): every module that imports the fixture gets a pair of its own, and
two bridges of one subnet would leave this host reaching one pair's daemons for the other's."""


@pytest.fixture(scope="session")
def libvirt_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtHost]:
    """One libvirt daemon on 127.0.0.1, in this machine's network namespace."""
    with start_libvirt_host("solo", tmp_path_factory.mktemp("libvirt-solo")) as host:
        yield host


class LibvirtPair(NamedTuple):
    """Two libvirt hosts that can reach each other (and be unpacked: ``a, b = pair``)."""

    a: LibvirtHost
    b: LibvirtHost


@pytest.fixture(scope="session")
def libvirt_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LibvirtPair]:
    """Two libvirt daemons, ``a`` and ``b``, each in a network namespace of its own (see
    :func:`netns.two_hosts`: bridge ``usher-lvXXXX-br`` at ``10.213.N.1``, ``a`` at ``.2``,
    ``b`` at ``.3``), listening on its namespace's address."""
    suffix = uuid.uuid4().hex[:4]
    with two_hosts(f"{PAIR_PREFIX}{suffix}", f"10.213.{next(PAIR_SUBNETS)}") as (_, hosts):
        (ns_a, addr_a), (ns_b, addr_b) = hosts.items()
        root = tmp_path_factory.mktemp("libvirt-pair")
        with (
            start_libvirt_host("a", root / "a", netns=ns_a, listen_addr=addr_a) as a,
            start_libvirt_host("b", root / "b", netns=ns_b, listen_addr=addr_b) as b,
        ):
            yield LibvirtPair(a, b)
