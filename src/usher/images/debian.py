"""``usher image build debian``: a Debian 12 guest users log into, configured by cloud-init.

Built as root with ``mmdebstrap`` from the host's own Debian apt sources (nothing is fetched
from anywhere else) into a directory, which becomes an ext4 file system (``mkfs.ext4 -d``,
no loop device) in a 2 GiB qcow2 base disk. The image is of kind ``kernel``: the driver boots
the Debian cloud kernel and its initramfs directly with ``root=/dev/vda``, the whole disk.

The guest:

- runs cloud-init with only the NoCloud data source (its seed is a CD-ROM or any block device
  labelled ``cidata``, see :mod:`usher.images.nocloud`): users, SSH keys, host name, and
  the network from the seed's ``network-config`` (rendered for systemd-networkd), or DHCP on
  the first NIC (``eth0``) when it has none;
- grows its root file system to the size of its disk at boot (cloud-init's ``resizefs``:
  the ext4 fills ``/dev/vda``, so an overlay made larger than the base disk is used whole);
- has no SSH host keys in the image: each VM makes its own at first boot;
- has a login prompt on the serial console ``ttyS0``, and powers off on the ACPI power button
  (systemd-logind), which is how the qemu driver stops a guest gracefully;
- skips what only slows a VM down: apt and other timers, fsck of the root, locale generation.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from usher.images.catalog import (
    DISK,
    ImageError,
    StrPath,
    publish_kernel_image,
    qemu_img,
    read_manifest,
    staging_dir,
)
from usher.model import Image

NAME = "debian"
SUITE = "bookworm"
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
DISK_SIZE = 2 << 30
DEFAULT_WORK_DIR = Path.home() / ".cache" / "usher" / "debian"

PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "systemd-sysv",
    "udev",
    "dbus",
    "systemd-resolved",
    "iproute2",
    "openssh-server",
    "cloud-init",
    "cloud-guest-utils",
    "e2fsprogs",
    "qemu-guest-agent",
    "sudo",
    "less",
    "nano",
)
"""dbus is for systemd-logind (the power button), systemd-resolved for the DNS servers
systemd-networkd learns; cloud-init renders its network configuration for systemd-networkd."""

MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
)
"""Periodic upkeep that only costs a VM time; masked, so no preset switches it back on."""

LEFT_OUT = (
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/doc/*",
)

CLOUD_CFG = """\
# Usher's Debian image (usher image build debian): the seed is a NoCloud disk labelled cidata.
datasource_list: [NoCloud, None]
locale: C.UTF-8
manage_etc_hosts: localhost
ssh_genkeytypes: [ed25519, ecdsa]
ssh_quiet_keygen: true
system_info:
  network:
    renderers: [networkd]
cloud_init_modules:
  - seed_random
  - bootcmd
  - write-files
  - growpart
  - resizefs
  - disk_setup
  - mounts
  - set_hostname
  - update_hostname
  - update_etc_hosts
  - ca-certs
  - rsyslog
  - users-groups
  - ssh
cloud_config_modules:
  - locale
  - set-passwords
  - apt-pipelining
  - apt-configure
  - ntp
  - timezone
  - runcmd
cloud_final_modules:
  - package-update-upgrade-install
  - write-files-deferred
  - scripts-vendor
  - scripts-per-once
  - scripts-per-boot
  - scripts-per-instance
  - scripts-user
  - final-message
  - power-state-change
"""

INITRAMFS_FILES = {
    "conf.d/usher": "MODULES=list\n",
    "hooks/usher-virtio": (
        "#!/bin/sh\n"
        "# Usher's Debian image: the initramfs needs only the virtio disk (ext4 is built in)\n"
        '[ "$1" = prereqs ] && exit 0\n'
        ". /usr/share/initramfs-tools/hook-functions\n"
        "manual_add_modules virtio_pci virtio_blk\n"
    ),
}
"""Put in ``/etc/initramfs-tools`` before the kernel is installed: a small initramfs (a
third of the default one, which holds most of the kernel's drivers) boots faster."""

FILES = {
    "etc/cloud/cloud.cfg.d/90-usher.cfg": CLOUD_CFG,
    "etc/fstab": "/dev/vda / ext4 defaults 0 0\n",
    "etc/hostname": "debian\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    "etc/default/locale": "LANG=C.UTF-8\n",
    # the host keys cloud-init makes at first boot (RSA ones take seconds under TCG)
    "etc/ssh/sshd_config.d/usher-host-keys.conf": (
        "HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n"
    ),
    # a root disk made larger while the VM runs is used at once, not at the next boot
    "etc/udev/rules.d/90-usher-grow-root.rules": (
        'ACTION=="change", SUBSYSTEM=="block", KERNEL=="vda", ENV{RESIZE}=="1", '
        'RUN+="/sbin/resize2fs /dev/vda"\n'
    ),
    # one configured NIC is enough for cloud-init to go on (it waits for the network)
    "etc/systemd/system/systemd-networkd-wait-online.service.d/usher-any.conf": (
        "[Service]\nExecStart=\n"
        "ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n"
    ),
}


def recipe_digest() -> str:
    """A digest of how the image is built (this module's source): caches of built images
    are keyed by it, so a change of recipe is a new build."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def build_debian(
    storage: StrPath,
    *,
    work_dir: StrPath | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Image:
    """Build the ``debian`` image into ``<storage>/images/debian/`` and return its manifest.

    Idempotent: an existing ``debian`` image is returned as it is unless ``force``. Needs
    root, ``mmdebstrap``, ``mkfs.ext4`` and ``qemu-img``. Downloaded packages are kept in
    ``work_dir`` (default ``~/.cache/usher/debian``) for the next build, which also assembles
    the root tree there. ``progress`` hears each step.
    """
    existing = read_manifest(storage, NAME)
    if existing is not None and not force:
        return existing
    say = progress or (lambda step: None)
    _check_tools()
    work = Path(work_dir) if work_dir else DEFAULT_WORK_DIR
    archives = work / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="usher-debian-", dir=work) as tmp:
        root = Path(tmp) / "root"
        _bootstrap(root, archives, _initramfs_config(Path(tmp) / "initramfs-tools"), say)
        say("configuring the guest")
        _configure(root)
        kernel = _only(root / "boot", "vmlinuz-*")
        version = kernel.name.removeprefix("vmlinuz-")
        initrd = root / "boot" / f"initrd.img-{version}"
        staged = staging_dir(storage, NAME, "build")
        try:
            shutil.copyfile(kernel, staged / "vmlinuz")
            shutil.copyfile(initrd, staged / "initrd.img")
            say(f"making the {DISK_SIZE >> 30} GiB root file system")
            _root_disk(root, Path(tmp) / "root.ext4", staged / DISK)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    published = publish_kernel_image(
        storage,
        staged,
        NAME,
        {"kernel": "vmlinuz", "initrd": "initrd.img", "disk": DISK},
        cmdline=CMDLINE,
        cloud_init=True,
        description=f"Debian 12 with cloud-init, Linux {version} (recipe {recipe_digest()})",
    )
    say(f"image {NAME} is ready in {staged.parent / NAME}")
    return published


def host_sources(suite: str = SUITE, apt: Path = Path("/etc/apt")) -> list[Path]:
    """The host's apt source files for ``suite`` (one-line ``.list`` or deb822 ``.sources``
    in ``apt``): the only places the build downloads from."""
    candidates = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    word = re.compile(rf"(?m)^(?:deb\s.*\s|Suites:.*\s){re.escape(suite)}(?:\s|$)")
    return [
        path
        for path in candidates
        if path.suffix in (".list", ".sources") and path.is_file() and word.search(path.read_text())
    ]


def _check_tools() -> None:
    if os.geteuid() != 0:
        raise ImageError("building the debian image needs root (mmdebstrap, file ownership)")
    for tool, package in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs")):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is not installed (Debian package {package})")


def _host_apt_options() -> list[str]:
    """The host's settings that decide whether its mirrors' Release files are accepted
    (a snapshot mirror's are past their Valid-Until): the build trusts what the host does."""
    dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False)
    wanted = ("Acquire::Check-Valid-Until", "Acquire::Check-Date")
    return [
        f"--aptopt={line.rstrip(';')}"
        for line in dump.stdout.splitlines()
        if line.split(" ", 1)[0] in wanted
    ]


def _initramfs_config(directory: Path) -> Path:
    for relative, content in INITRAMFS_FILES.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o755 if relative.startswith("hooks/") else 0o644)
    return directory


def _bootstrap(root: Path, archives: Path, initramfs: Path, say: Callable[[str], None]) -> None:
    sources = host_sources()
    if not sources:
        raise ImageError(f"the host has no apt source for Debian {SUITE} in /etc/apt")
    say(f"mmdebstrap {SUITE} from {', '.join(str(path) for path in sources)}")
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        *_host_apt_options(),
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in LEFT_OUT),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        # downloaded packages are kept for the next build (mmdebstrap's documented recipe)
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f'--setup-hook=sync-in "{archives}" /var/cache/apt/archives/',
        '--setup-hook=mkdir -p "$1"/etc/initramfs-tools',
        f'--setup-hook=sync-in "{initramfs}" /etc/initramfs-tools',
        f'--customize-hook=sync-out /var/cache/apt/archives "{archives}"',
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        SUITE,
        str(root),
        *(str(path) for path in sources),
    ]
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as run:
        assert run.stdout is not None
        for line in run.stdout:
            tail = [*tail[-19:], line.rstrip()]
            if line.startswith("I: "):
                say(line[3:].strip())
    if run.returncode != 0:
        detail = "\n".join(tail)
        raise ImageError(f"mmdebstrap failed (exit status {run.returncode}):\n{detail}")


def _configure(root: Path) -> None:
    for relative, content in FILES.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never write through a symlink: it may point off the tree
        path.write_text(content)
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "machine-id").write_text("")  # each VM makes its own at first boot
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    resolv = root / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    systemctl = ["chroot", str(root), "systemctl"]  # the guest's: a host may have no systemd
    _run([*systemctl, "enable", "systemd-networkd.service", "systemd-resolved.service"])
    _run([*systemctl, "mask", *MASKED_UNITS])


def _root_disk(root: Path, raw: Path, disk: Path) -> None:
    """Turn the tree ``root`` into the ext4 of a qcow2 ``disk``, by way of the raw ``raw``."""
    with raw.open("wb") as fh:
        fh.truncate(DISK_SIZE)
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root), str(raw)])
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk))
    raw.unlink()


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise ImageError(f"{argv[0]} {argv[1]} failed: {detail}")


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise ImageError(f"expected one {pattern} in {directory}, found {len(found)}")
    return found[0]
