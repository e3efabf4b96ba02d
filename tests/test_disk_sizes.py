"""Disk sizes as users write them (``--disk-size``, ``--disk``, ``ush resize --disk``) and as
the model holds them: whole GiB, bounded, anything else refused with a clear message."""

from __future__ import annotations

import pytest

from usher.bounds import MAX_DISK_GB, BoundsError, parse_gib
from usher.cli.ush_cmd_resize import parse_growth
from usher.model import ResizeVM, VMSpec


@pytest.mark.parametrize(
    ("text", "gib"),
    [("8G", 8), ("8GiB", 8), ("2048M", 2), ("2048mib", 2), ("1T", 1024), (" 3 g ", 3)],
)
def test_sizes_in_whole_gib(text: str, gib: int) -> None:
    assert parse_gib(text) == gib


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1500M", "not a whole number of GiB"),
        ("0G", "must be 1 to"),
        ("-1G", "write a whole number and a unit"),
        ("8", "write a whole number and a unit"),
        ("8GB", "write a whole number and a unit"),
        ("1.5G", "write a whole number and a unit"),
        ("1e3G", "write a whole number and a unit"),
        ("\uff18G", "write a whole number and a unit"),  # a fullwidth digit
        ("17T", f"must be 1 to {MAX_DISK_GB} GiB"),
        ("9" * 20 + "T", f"must be 1 to {MAX_DISK_GB} GiB"),
        ("9" * 30 + "G", "write a whole number and a unit"),
    ],
)
def test_other_sizes_are_refused_clearly(text: str, why: str) -> None:
    with pytest.raises(BoundsError, match=why):
        parse_gib(text)


def test_growth_names_the_root_or_a_data_disk() -> None:
    assert parse_growth("+1G") == (0, 1)
    assert parse_growth("2:+10G") == (2, 10)
    for text in ("1G", "2:1G", "+-1G", "x:+1G", "99:+1G", "2:+0G", ":+1G"):
        with pytest.raises(BoundsError):
            parse_growth(text)


def test_a_spec_holds_bounded_disks() -> None:
    spec = VMSpec(disk_gb=8, disks=[{"size_gb": 2}, {"size_gb": 10}])
    assert spec.disk_sizes() == [8, 2, 10] and spec.disks_asked_gb() == 20
    assert VMSpec().disk_sizes() == [None] and VMSpec().disks_asked_gb() == 0
    grown = spec.with_disk_size(2, 12)
    assert grown.disks == [{"size_gb": 2}, {"size_gb": 12}] and spec.disks[1]["size_gb"] == 10
    with pytest.raises(IndexError, match="no disk 3"):
        spec.with_disk_size(3, 1)
    for bad in (
        {"disk_gb": 0},
        {"disk_gb": MAX_DISK_GB + 1},
        {"disks": [{"size_gb": 0}]},
        {"disks": [{"size_gb": 1.0}]},
        {"disks": [{"size_gb": True}]},
        {"disks": [{"size": 1}]},
        {"disks": [{"size_gb": 1}] * 17},
    ):
        with pytest.raises(ValueError):
            VMSpec.model_validate(bad)
    with pytest.raises(ValueError, match="at most once"):
        ResizeVM.model_validate({"disks": [{"grow_gb": 1}, {"disk": 0, "grow_gb": 2}]})
