"""Guest images: the catalogue in shared storage, per-VM overlays, and a real boot of ``tiny``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from qemu.qmp import QMPClient

from usher.cli.image_cmd import image as image_cli
from usher.images import (
    ImageError,
    build_tiny,
    create_overlay,
    delete_image,
    image_dir,
    image_path,
    import_disk,
    list_images,
    read_manifest,
    remove_vm_disks,
    vm_dir,
    write_manifest,
)
from usher.model import Image, ImageKind

MAC = "52:54:00:12:34:56"


def qcow2(path: Path, size: str = "16M", *extra: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True)
    return path


def qemu_img_info(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def same_content(raw: Path, disk: Path) -> bool:
    """Whether the qcow2 ``disk`` holds exactly the bytes of the raw disk ``raw``."""
    compare = ["qemu-img", "compare", "-q", "-f", "raw", "-F", "qcow2", str(raw), str(disk)]
    return subprocess.run(compare, check=False).returncode == 0


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def base(storage: Path, tmp_path: Path) -> Image:
    return import_disk(storage, "base", qcow2(tmp_path / "base.qcow2"), "a blank disk")


# the catalogue -------------------------------------------------------------------------------


def test_manifest_round_trip(storage: Path) -> None:
    image = Image(
        name="k1",
        kind=ImageKind.KERNEL,
        files={"kernel": "vmlinuz", "initrd": "initrd.gz"},
        size_bytes=123,
        cmdline="console=ttyS0",
        description="test",
    )
    path = write_manifest(storage, image)
    assert path == storage / "images" / "k1" / "image.json"
    assert read_manifest(storage, "k1") == image
    assert list_images(storage) == [image]
    assert read_manifest(storage, "nothing") is None
    assert image_path(storage, image, "kernel") == (storage / "images/k1/vmlinuz").absolute()
    with pytest.raises(ImageError, match="no disk file"):
        image_path(storage, image, "disk")


def test_names_cannot_leave_the_storage_dir(storage: Path) -> None:
    with pytest.raises(ImageError, match="invalid image name"):
        image_dir(storage, "../etc")
    with pytest.raises(ImageError, match="invalid VM id"):
        vm_dir(storage, "a/b")


def test_list_skips_broken_manifests(
    storage: Path, base: Image, caplog: pytest.LogCaptureFixture
) -> None:
    (storage / "images" / "broken").mkdir()
    (storage / "images" / "broken" / "image.json").write_text('{"name": "broken"')
    (storage / "images" / "nomanifest").mkdir()
    (storage / "images" / ".import-x-123").mkdir()
    with caplog.at_level(logging.WARNING, logger="usher.images.catalog"):
        assert [image.name for image in list_images(storage)] == ["base"]
    assert "skipping image broken" in caplog.text
    with pytest.raises(ImageError, match="broken manifest"):
        read_manifest(storage, "broken")


def test_import_copies_a_qcow2(storage: Path, base: Image) -> None:
    assert base.kind == ImageKind.DISK
    assert base.files == {"disk": "disk.qcow2"}
    disk = image_path(storage, base, "disk")
    assert disk == (storage / "images" / "base" / "disk.qcow2").absolute()
    assert base.size_bytes == disk.stat().st_size > 0
    assert qemu_img_info(disk)["format"] == "qcow2"
    assert read_manifest(storage, "base") == base


def test_import_from_a_stream(storage: Path, tmp_path: Path) -> None:
    data = qcow2(tmp_path / "up.qcow2").read_bytes()
    imported = import_disk(storage, "up", io.BytesIO(data))
    assert image_path(storage, imported, "disk").read_bytes() == data


def test_import_makes_a_raw_disk_qcow2(storage: Path, tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(range(256)) * 4096 + b"\0" * 65536)  # what a cloud image holds
    imported = import_disk(storage, "raw", raw)  # told from its first bytes: no magic, raw
    disk = image_path(storage, imported, "disk")
    assert qemu_img_info(disk)["format"] == "qcow2"
    assert same_content(raw, disk)
    # a raw disk that begins like a qcow2 is taken as raw when said to be raw
    fake = tmp_path / "fake.raw"
    fake.write_bytes(qcow2(tmp_path / "inner.qcow2").read_bytes())
    said_raw = import_disk(storage, "said-raw", fake, fmt="raw")
    assert same_content(fake, image_path(storage, said_raw, "disk"))


def test_import_refuses_other_formats_and_a_format_that_does_not_match(
    storage: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(ImageError, match=r"is a raw disk, not qcow2"):
        import_disk(storage, "raw", raw, fmt="qcow2")
    for fmt in ("vmdk", "vdi", "vhdx", "qed", "vpc"):
        other = tmp_path / f"disk.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(other), "16M"], check=True)
        with pytest.raises(ImageError, match=r"is a .*disk: import qcow2 or raw"):
            import_disk(storage, fmt, other)
    with pytest.raises(ImageError, match="no such file"):
        import_disk(storage, "missing", tmp_path / "missing.qcow2")
    backed = qcow2(tmp_path / "backed.qcow2", "16M", "-b", str(raw), "-F", "raw")
    with pytest.raises(ImageError, match="has a backing file"):
        import_disk(storage, "backed", backed)
    assert list_images(storage) == []
    assert list((storage / "images").iterdir()) == [], "a refused import left files behind"


def test_import_refuses_an_image_that_refers_to_a_host_file(storage: Path, tmp_path: Path) -> None:
    """A qcow2 whose external data file (or backing file, json: names too) points at a
    file of the host would have a VM booted from it read that file (issue 12, item 6)."""
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"root-only content\n" * 4096)
    data_file = qcow2(tmp_path / "data-file.qcow2", "64K", "-o", f"data_file={tmp_path}/data.raw")
    with pytest.raises(ImageError, match="has an external data file"):
        import_disk(storage, "datafile", data_file)
    json_name = "json:" + json.dumps(
        {"driver": "raw", "file": {"driver": "file", "filename": str(secret)}}
    )
    backed = qcow2(tmp_path / "json.qcow2", "64K", "-b", json_name, "-F", "raw", "-u")
    with pytest.raises(ImageError, match="has a backing file"):
        import_disk(storage, "jsonbacked", backed)
    with pytest.raises(ImageError, match="has a backing file"):
        import_disk(storage, "upload", io.BytesIO(backed.read_bytes()))
    assert list_images(storage) == []


def test_import_refuses_an_existing_name_unless_replace(
    storage: Path, base: Image, tmp_path: Path
) -> None:
    bigger = qcow2(tmp_path / "bigger.qcow2", "32M")
    with pytest.raises(ImageError, match="image base already exists"):
        import_disk(storage, "base", bigger)
    assert read_manifest(storage, "base") == base
    replaced = import_disk(storage, "base", bigger, "bigger", replace=True)
    assert read_manifest(storage, "base") == replaced
    assert qemu_img_info(image_path(storage, replaced, "disk"))["virtual-size"] == 32 << 20
    assert sorted(p.name for p in (storage / "images").iterdir()) == ["base"]


def test_overlay_is_backed_by_the_base_disk(storage: Path, base: Image) -> None:
    overlay = create_overlay(storage, base, "vm-1")
    assert overlay == storage / "vms" / "vm-1" / "disk.qcow2"
    info = qemu_img_info(overlay)
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == str(image_path(storage, base, "disk"))
    assert info["backing-filename-format"] == "qcow2"
    assert info["virtual-size"] == 16 << 20

    overlay.write_bytes(overlay.read_bytes() + b"guest writes")
    assert create_overlay(storage, base, "vm-1") == overlay
    assert overlay.read_bytes().endswith(b"guest writes"), "an existing overlay was recreated"


def test_an_image_in_use_is_kept(storage: Path, base: Image) -> None:
    create_overlay(storage, base, "vm-1")
    with pytest.raises(ImageError, match="base of VM disks: vm-1"):
        delete_image(storage, "base")
    with pytest.raises(ImageError, match="base of VM disks: vm-1"):
        import_disk(storage, "base", image_path(storage, base, "disk"), replace=True)
    assert read_manifest(storage, "base") == base
    remove_vm_disks(storage, "vm-1")
    assert not vm_dir(storage, "vm-1").exists()
    remove_vm_disks(storage, "vm-1")
    assert delete_image(storage, "base") is True
    assert not image_dir(storage, "base").exists()
    assert delete_image(storage, "base") is False


def test_overlay_needs_the_base_disk(storage: Path, base: Image) -> None:
    image_path(storage, base, "disk").unlink()
    with pytest.raises(ImageError, match="lost its base disk"):
        create_overlay(storage, base, "vm-1")
    assert not vm_dir(storage, "vm-1").exists()


def test_cli_import_list_rm(storage: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"USHER_STORAGE": str(storage)}
    disk = qcow2(tmp_path / "mine.qcow2")
    result = runner.invoke(image_cli, ["import", str(disk), "--name", "mine"], env=env)
    assert result.exit_code == 0, result.output
    again = runner.invoke(image_cli, ["import", str(disk), "--name", "mine"], env=env)
    assert again.exit_code == 1
    assert "image mine already exists" in again.output
    listed = runner.invoke(image_cli, ["list", "-o", "json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert [item["name"] for item in json.loads(listed.stdout)] == ["mine"]
    table = runner.invoke(image_cli, ["list", "--storage-dir", str(tmp_path / "empty")])
    assert table.exit_code == 0
    assert "mine" not in table.stdout
    assert runner.invoke(image_cli, ["rm", "mine"], env=env).exit_code == 0
    gone = runner.invoke(image_cli, ["rm", "mine"], env=env)
    assert gone.exit_code == 1
    assert "no image mine" in gone.output


# the tiny image, built and booted for real ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Image]]:
    storage = tmp_path_factory.mktemp("tiny-storage")
    steps: list[str] = []
    started = time.monotonic()
    image = build_tiny(storage, progress=steps.append)
    print(f"\ntiny image built in {time.monotonic() - started:.1f} s: {steps}")
    assert any(step.startswith("building the initramfs") for step in steps)
    yield storage, image


def test_tiny_manifest(tiny: tuple[Path, Image]) -> None:
    storage, image = tiny
    assert read_manifest(storage, "tiny") == image
    assert image.kind == ImageKind.KERNEL
    assert set(image.files) == {"kernel", "initrd", "disk"}
    paths = [image_path(storage, image, role) for role in image.files]
    assert image.size_bytes == sum(path.stat().st_size for path in paths)
    assert image.cmdline is not None and "console=ttyS0" in image.cmdline
    assert re.search(r"Linux \d+\.\d+\.\d+-\d+-cloud-amd64", image.description)
    assert qemu_img_info(image_path(storage, image, "disk"))["format"] == "qcow2"
    steps: list[str] = []
    assert build_tiny(storage, progress=steps.append) == image, "a second build was not a no-op"
    assert steps == []


def _serial(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


async def _wait_for(
    proc: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, _serial(log))
        if found:
            return found
        assert proc.poll() is None, f"QEMU exited ({proc.returncode}):\n{_serial(log)}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {pattern!r} on the console in {timeout} s:\n{_serial(log)}")


@pytest.mark.timeout(600)
async def test_tiny_boots_heartbeats_gets_an_address_and_powers_off(
    tiny: tuple[Path, Image], tmp_path: Path
) -> None:
    storage, image = tiny
    overlay = create_overlay(storage, image, "vm-t1")
    log, qmp_socket = tmp_path / "serial.log", tmp_path / "qmp.sock"
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-m", "256",
        "-kernel", str(image_path(storage, image, "kernel")),
        "-initrd", str(image_path(storage, image, "initrd")),
        "-append", f"{image.cmdline} usher.name=t1",
        "-drive", f"file={overlay},if=virtio",
        "-netdev", "user,id=n0",
        "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-serial", f"file:{log}",
        "-qmp", f"unix:{qmp_socket},server=on,wait=off",
        "-display", "none",
        "-no-reboot",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(argv)
    try:
        await _wait_for(proc, log, r"USHER-READY t1\n", 120)
        print(f"\ntiny guest ready {time.monotonic() - started:.1f} s after QEMU started")
        await _wait_for(proc, log, r"usher-heartbeat 3\n", 30)
        await _wait_for(proc, log, r"USHER-IP 10\.0\.2\.15\n", 60)
        beats = [int(n) for n in re.findall(r"^usher-heartbeat (\d+)$", _serial(log), re.M)]
        assert beats == list(range(1, len(beats) + 1))
        assert "cannot load" not in _serial(log), "a kernel module failed to load"

        qmp = QMPClient("test")
        await qmp.connect(str(qmp_socket))
        asked = time.monotonic()
        await qmp.execute("system_powerdown")
        async with asyncio.timeout(15):
            while (event := await qmp.events.get())["event"] != "SHUTDOWN":
                pass
            assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
            while proc.poll() is None:
                await asyncio.sleep(0.05)
        print(f"powered off {time.monotonic() - asked:.1f} s after system_powerdown")
        with contextlib.suppress(EOFError):
            await qmp.disconnect()
        assert proc.returncode == 0
        assert "USHER-POWEROFF" in _serial(log)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
