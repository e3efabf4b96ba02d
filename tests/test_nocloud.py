"""cloud-init NoCloud seeds: what build_seed writes reads back exactly, as cloud-init reads it."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pycdlib
import pytest
import yaml

from usher.images.nocloud import MAX_SEED_BYTES, SeedError, build_seed

META = {"instance-id": "vm-1", "local-hostname": "web-1"}
NETWORK = {
    "version": 2,
    "ethernets": {
        "eth0": {"match": {"macaddress": "52:54:00:12:34:56"}, "addresses": ["10.0.0.5/24"]}
    },
}


def read_seed(path: Path, joliet: bool = False) -> dict[str, bytes]:
    """The files of the seed at ``path`` by their Rock Ridge (or Joliet) names."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        files = {}
        facade = iso.get_joliet_facade() if joliet else iso.get_rock_ridge_facade()
        for child in facade.list_children("/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = (
                child.file_identifier().decode("utf-16-be")
                if joliet
                else child.rock_ridge.name().decode()
            )
            out = io.BytesIO()
            facade.get_file_from_iso_fp(out, f"/{name}")
            files[name] = out.getvalue()
        return files
    finally:
        iso.close()


def volume_id(path: Path) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        return iso.pvd.volume_identifier.decode().strip()
    finally:
        iso.close()


def test_the_seed_has_the_label_and_the_files_cloud_init_reads(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, meta_data=META, user_data="#cloud-config\nhostname: web-1\n")
    assert volume_id(seed) == "cidata"
    for joliet in (False, True):
        files = read_seed(seed, joliet=joliet)
        assert sorted(files) == ["meta-data", "user-data"]
        assert files["user-data"] == b"#cloud-config\nhostname: web-1\n"
        assert json.loads(files["meta-data"]) == META
        assert yaml.safe_load(files["meta-data"]) == META


def test_network_config_is_written_when_given(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, meta_data=META, user_data="", network_config=NETWORK)
    files = read_seed(seed)
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert files["user-data"] == b""
    assert yaml.safe_load(files["network-config"]) == NETWORK


def test_blkid_finds_the_label_cloud_init_looks_for(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, meta_data=META, user_data="")
    probe = subprocess.run(
        ["blkid", "-p", "-o", "export", str(seed)], capture_output=True, text=True, check=True
    )
    fields = dict(line.split("=", 1) for line in probe.stdout.splitlines())
    assert fields["TYPE"] == "iso9660"
    assert fields["LABEL"] == "cidata"


ODD_TEXT = (
    "nul\x00 bell\x07 esc\x1b del\x7f nel\x85 c1\x9b ls\u2028 ps\u2029 bom\ufeff "
    'nonchar\ufffe\uffff tab\t cr\r lf\n quote" backslash\\ \\u0041 '
    "é 漢字 emoji\U0001f600 astral\U00010000\U0010ffff rtl\u202e"
)


def test_odd_characters_read_back_exactly(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    meta = {**META, "note": ODD_TEXT, ODD_TEXT: [ODD_TEXT, 1, 2.5, True, None]}
    network = {**NETWORK, "comment": ODD_TEXT}
    build_seed(seed, meta_data=meta, user_data=ODD_TEXT, network_config=network)
    files = read_seed(seed)
    assert files["user-data"] == ODD_TEXT.encode("utf-8")
    assert yaml.safe_load(files["meta-data"]) == meta  # cloud-init's reading
    assert json.loads(files["meta-data"]) == meta  # and still JSON
    assert yaml.safe_load(files["network-config"]) == network
    assert read_seed(seed, joliet=True) == files


def test_megabytes_of_user_data_are_written_faithfully(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    user_data = "#!/bin/sh\n" + "".join(f"echo line {i} 漢\n" for i in range(400_000))
    assert len(user_data.encode()) > 6 << 20
    build_seed(seed, meta_data=META, user_data=user_data)
    assert read_seed(seed)["user-data"] == user_data.encode()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"user_data": "x" * (MAX_SEED_BYTES + 1)}, "at most 16 MiB"),
        ({"user_data": "half a pair \ud83d"}, "user-data is not valid Unicode text"),
        ({"user_data": b"#cloud-config\n"}, "user-data must be text, not bytes"),
        ({"meta_data": ["instance-id"]}, "meta-data must be a mapping, not list"),
        ({"meta_data": {"when": object()}}, "meta-data cannot be written as JSON"),
        ({"meta_data": {"ratio": math.nan}}, "meta-data cannot be written as JSON"),
        ({"meta_data": {"name": "lone \udc00"}}, "meta-data holds a lone surrogate"),
        ({"network_config": {"version": {1, 2}}}, "network-config cannot be written as JSON"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    tmp_path: Path, arguments: dict[str, Any], message: str
) -> None:
    seed = tmp_path / "seed.iso"
    seed.write_bytes(b"the old seed")
    kwargs: dict[str, Any] = {"meta_data": META, "user_data": "", **arguments}
    with pytest.raises(SeedError, match=message):
        build_seed(seed, **kwargs)
    assert seed.read_bytes() == b"the old seed"
    assert os.listdir(tmp_path) == ["seed.iso"]


def test_a_failed_write_leaves_the_old_seed_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = tmp_path / "seed.iso"
    build_seed(seed, meta_data=META, user_data="old")

    def fail(self: pycdlib.PyCdlib, fp: Any, *args: Any, **kwargs: Any) -> None:
        fp.write(b"half an iso")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pycdlib.PyCdlib, "write_fp", fail)
    with pytest.raises(OSError, match="No space left"):
        build_seed(seed, meta_data=META, user_data="new")
    monkeypatch.undo()
    assert read_seed(seed)["user-data"] == b"old"
    assert os.listdir(tmp_path) == ["seed.iso"]


def test_readers_see_a_whole_old_or_new_seed_while_it_is_rewritten(tmp_path: Path) -> None:
    seed = tmp_path / "seed.iso"
    contents = {f"version {i}\n" * 50_000 for i in range(2)}
    build_seed(seed, meta_data=META, user_data=min(contents))
    done = threading.Event()
    seen: list[bytes] = []

    def writer() -> None:
        for i in range(10):
            build_seed(seed, meta_data=META, user_data=sorted(contents)[i % 2])
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        seen.append(read_seed(seed)["user-data"])
    thread.join()
    assert seen and {data.decode() for data in seen} <= contents
    assert os.listdir(tmp_path) == ["seed.iso"]
