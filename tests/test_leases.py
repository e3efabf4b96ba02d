"""The fake driver's disk leases: a host coming back settles what it lost before it is
alive again, in one step no other host can get into."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from usher.vmm.lease import LeaseHeld, Leases, host_alive, lease_holder

TTL = 0.3


def hosts(tmp_path: Path) -> tuple[Leases, Leases, Leases]:
    return tuple(Leases(tmp_path, name, TTL) for name in ("/a", "/b", "/c"))  # type: ignore[return-value]


def test_a_host_coming_back_settles_what_it_lost_before_it_renews(tmp_path: Path) -> None:
    a, b, _c = hosts(tmp_path)
    a.take("vm-1")
    a.take("vm-2")
    time.sleep(TTL + 0.1)  # a is away: its leases expire
    b.take("vm-1")  # and b took vm-1's disk
    seen: list[tuple[str, str, bool]] = []
    a.come_back(
        ["vm-1", "vm-2"],
        lambda vm, other: seen.append((vm, other, host_alive(a.root, "/a"))),
    )
    assert seen == [("vm-1", "/b", False)]  # a was not alive yet while it settled vm-1
    assert lease_holder(a.root, "vm-1") == "/b" and lease_holder(a.root, "vm-2") == "/a"
    assert host_alive(a.root, "/a")


def test_no_host_takes_a_lease_while_another_comes_back(tmp_path: Path) -> None:
    """Between a returning host's look at its leases and its renewal, another host's take
    waits; then it meets the returned host's lease (before, it could take it in between,
    and both hosts ran the VM)."""
    a, b, c = hosts(tmp_path)
    a.take("vm-1")
    c.take("vm-9")
    a.take("vm-2")
    time.sleep(TTL + 0.1)
    c.renew()
    c.take("vm-2")  # c took one of a's disks while a was away
    outcome: list[BaseException | None] = []

    def b_takes() -> None:
        try:
            b.take("vm-1")
            outcome.append(None)
        except LeaseHeld as exc:
            outcome.append(exc)

    taker = threading.Thread(target=b_takes)

    def lost(vm_id: str, other: str) -> None:
        taker.start()  # b tries while a is in the middle of coming back
        time.sleep(0.2)
        assert outcome == [], "b got in while a was coming back"

    a.come_back(["vm-1", "vm-2"], lost)
    taker.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseHeld)
    assert lease_holder(a.root, "vm-1") == "/a"


@pytest.mark.parametrize("returns", [True, False])
def test_a_lease_taken_back_by_its_own_host_is_kept(tmp_path: Path, returns: bool) -> None:
    a, _b, _c = hosts(tmp_path)
    a.take("vm-1")
    if returns:
        time.sleep(TTL + 0.1)
    a.come_back(["vm-1"], lambda vm, other: pytest.fail(f"{vm} lost to {other}"))
    assert lease_holder(a.root, "vm-1") == "/a"
