"""The fake driver's disk leases: a host coming back settles what it lost before it is
alive again, in one step no other host can get into; a migration's source offers its disk
to one target, which takes it only while it is offered."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from usher.vmm.lease import Guests, LeaseHeld, Leases, host_alive, lease_holder

TTL = 0.3


def host(
    tmp_path: Path,
    name: str,
    held: list[str] | None = None,
    lost: Callable[[str, str | None], None] | None = None,
) -> Leases:
    guests = Guests(held=lambda: list(held or []), lost=lost or (lambda vm, holder: None))
    return Leases(tmp_path, name, TTL, guests)


def lost_to(seen: list[tuple[str, str | None]]) -> Callable[[str, str | None], None]:
    return lambda vm, holder: seen.append((vm, holder))


def test_a_host_coming_back_settles_what_it_lost_before_it_renews(tmp_path: Path) -> None:
    seen: list[tuple[str, str | None, bool]] = []
    a = host(
        tmp_path,
        "/a",
        ["vm-1", "vm-2"],
        lambda vm, other: seen.append((vm, other, host_alive(tmp_path / "leases", "/a"))),
    )
    b = host(tmp_path, "/b")
    a.take("vm-1")
    a.take("vm-2")
    time.sleep(TTL + 0.1)  # a is away: its leases expire
    b.take("vm-1")  # and b took vm-1's disk
    a.come_back()
    assert seen == [("vm-1", "/b", False)]  # a was not alive yet while it settled vm-1
    assert lease_holder(a.root, "vm-1") == "/b" and lease_holder(a.root, "vm-2") == "/a"
    assert host_alive(a.root, "/a")


def test_no_host_takes_a_lease_while_another_comes_back(tmp_path: Path) -> None:
    """Between a returning host's look at its leases and its renewal, another host's take
    waits; then it meets the returned host's lease (before, it could take it in between,
    and both hosts ran the VM)."""
    outcome: list[BaseException | None] = []
    b, c = host(tmp_path, "/b"), host(tmp_path, "/c")

    def b_takes() -> None:
        try:
            b.take("vm-1")
            outcome.append(None)
        except LeaseHeld as exc:
            outcome.append(exc)

    taker = threading.Thread(target=b_takes)

    def lost(vm_id: str, other: str | None) -> None:
        taker.start()  # b tries while a is in the middle of coming back
        time.sleep(0.2)
        assert outcome == [], "b got in while a was coming back"

    a = host(tmp_path, "/a", ["vm-1", "vm-2"], lost)
    a.take("vm-1")
    c.take("vm-9")
    a.take("vm-2")
    time.sleep(TTL + 0.1)
    c.keep_alive()
    c.take("vm-2")  # c took one of a's disks while a was away
    a.come_back()
    taker.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseHeld)
    assert lease_holder(a.root, "vm-1") == "/a"


@pytest.mark.parametrize("returns", [True, False])
def test_a_lease_taken_back_by_its_own_host_is_kept(tmp_path: Path, returns: bool) -> None:
    a = host(tmp_path, "/a", ["vm-1"], lambda vm, other: pytest.fail(f"{vm} lost to {other}"))
    a.take("vm-1")
    if returns:
        time.sleep(TTL + 0.1)
    a.come_back()
    assert lease_holder(a.root, "vm-1") == "/a"


def test_a_lease_released_while_its_host_was_away_is_not_taken_back(tmp_path: Path) -> None:
    """As NFSv4 gives no expired lock back: the disk went (another host took it and let it
    go, or the VM stopped elsewhere), so the returning host's copy is lost."""
    seen: list[tuple[str, str | None]] = []
    a, b = host(tmp_path, "/a", ["vm-1"], lost_to(seen)), host(tmp_path, "/b")
    a.take("vm-1")
    time.sleep(TTL + 0.1)
    b.take("vm-1")
    b.release("vm-1")
    a.come_back()
    assert seen == [("vm-1", None)] and lease_holder(a.root, "vm-1") is None


def test_a_host_that_stalled_comes_back_before_it_takes_anything(tmp_path: Path) -> None:
    """A stalled host's first lease call (here a take, not its renewal) settles what it
    lost first: it cannot renew its way past a copy another host started meanwhile."""
    seen: list[tuple[str, str | None]] = []
    a, b = host(tmp_path, "/a", ["vm-1"], lost_to(seen)), host(tmp_path, "/b")
    a.take("vm-1")
    time.sleep(TTL + 0.1)  # a stalls
    b.take("vm-1")  # HA started vm-1 on b
    a.take("vm-2")  # a wakes up and starts another VM
    assert seen == [("vm-1", "/b")]
    assert lease_holder(a.root, "vm-1") == "/b" and lease_holder(a.root, "vm-2") == "/a"


def test_only_the_target_offered_the_disk_takes_it_and_only_while_offered(
    tmp_path: Path,
) -> None:
    a, b, c = host(tmp_path, "/a"), host(tmp_path, "/b"), host(tmp_path, "/c")
    a.take("vm-1")
    with pytest.raises(LeaseHeld, match="does not hold"):
        b.offer("vm-1", "to-b")  # only the holder offers
    a.offer("vm-1", "to-b")
    assert not c.accept("vm-1", "to-c")  # offered to another target
    assert a.withdraw("vm-1")  # the source gave up first: the disk is still its own
    assert not b.accept("vm-1", "to-b")  # a late take finds no offer
    assert lease_holder(a.root, "vm-1") == "/a"
    a.offer("vm-1", "to-b")
    assert b.accept("vm-1", "to-b")
    assert not a.withdraw("vm-1")  # the target took it first
    assert lease_holder(a.root, "vm-1") == "/b"
    assert not b.accept("vm-1", "to-b")  # once
