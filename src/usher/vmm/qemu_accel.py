"""Which accelerator QEMU uses on this host: KVM where it really works, TCG otherwise.

A ``/dev/kvm`` that opens is not proof: nested inside some virtual machines it exists, yet a
guest under it crawls so slowly that it looks hung. :func:`detect_accel` therefore asks, in
order: does the CPU have hardware virtualization (``vmx`` or ``svm``), does ``/dev/kvm`` open
for reading and writing, and does a test guest make progress under KVM? The test guest is
QEMU's own firmware with nothing to boot: SeaBIOS writes its log to the debug console and
ends with "No bootable device"; with working KVM (and under TCG) that takes well under a
second, so :data:`PROBE_TIMEOUT` seconds is plenty.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import tempfile
import time
from typing import NamedTuple

log = logging.getLogger(__name__)

DEFAULT_BINARY = "qemu-system-x86_64"
PROBE_TIMEOUT = 3.0
PROBE_MARKER = b"No bootable device"
"""What SeaBIOS prints when it has run to its end with no disk to boot."""


class AccelChoice(NamedTuple):
    """The accelerator to use (``kvm`` or ``tcg``) and why."""

    accel: str
    reason: str


def cpu_virt_flag() -> str | None:
    """``vmx`` (Intel) or ``svm`` (AMD) when the CPU offers hardware virtualization."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return next((flag for flag in ("vmx", "svm") if flag in flags), None)
    except OSError:
        pass
    return None


def probe(binary: str, accel: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run the firmware test guest under ``accel``: None when it ran to its end within
    ``timeout`` seconds, else what went wrong."""
    with tempfile.TemporaryDirectory(prefix="usher-accel-") as tmp:
        debug_log = os.path.join(tmp, "debugcon.log")
        argv = [
            binary,
            *("-accel", accel, "-machine", "pc", "-m", "16"),
            *("-nodefaults", "-no-user-config", "-display", "none"),
            *("-chardev", f"file,id=debug,path={debug_log}"),
            *("-device", "isa-debugcon,iobase=0x402,chardev=debug"),
        ]
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            return f"cannot run {binary}: {exc.strerror}"
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                if _contains(debug_log, PROBE_MARKER):
                    return None
                time.sleep(0.05)
        finally:
            proc.kill()
            _, stderr = proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            message = stderr.decode(errors="replace").strip()
            return f"QEMU cannot run a {accel} guest: {message or f'exit {proc.returncode}'}"
        return f"a {accel} test guest did not get through its firmware within {timeout:g} s"


def _contains(path: str, marker: bytes) -> bool:
    try:
        with open(path, "rb") as file:
            return marker in file.read()
    except FileNotFoundError:
        return False


@functools.cache
def detect_accel(binary: str = DEFAULT_BINARY) -> AccelChoice:
    """KVM if it works on this host, else TCG, with the reason; decided once per process."""
    choice = _decide(binary)
    log.info("QEMU accelerator: %s (%s)", choice.accel, choice.reason)
    return choice


def _decide(binary: str) -> AccelChoice:
    flag = cpu_virt_flag()
    if flag is None:
        return AccelChoice("tcg", "the CPU has no hardware virtualization (no vmx/svm flag)")
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        return AccelChoice("tcg", f"/dev/kvm is not usable: {exc.strerror}")
    failure = probe(binary, "kvm")
    if failure is not None:
        return AccelChoice("tcg", f"KVM does not work here: {failure}")
    return AccelChoice("kvm", f"the CPU has {flag}, /dev/kvm opens and a KVM test guest runs")
