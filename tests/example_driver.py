"""The example out-of-tree driver package (``examples/usher-example-driver``), installed the
way a site installs a driver: pip, editable, no dependencies (Usher is there)."""

from __future__ import annotations

import importlib
import site
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "examples" / "usher-example-driver"
NAME = "memory"
ENTRY_POINT = "usher_example_driver:MemoryDriver"


def install() -> None:
    """pip-install the package, and make it importable in this process too (a fresh
    interpreter reads the new ``.pth`` file at start; this one reads it now)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(PACKAGE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    site.addsitedir(sysconfig.get_paths()["purelib"])
    importlib.invalidate_caches()
    found = {ep.name: ep.value for ep in entry_points(group="usher.drivers")}
    assert found.get(NAME) == ENTRY_POINT, found
