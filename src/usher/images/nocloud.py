"""cloud-init NoCloud seeds: a small ISO 9660 image, volume id ``cidata``, made with pycdlib.

cloud-init's NoCloud data source finds the seed by its label on any block device (a CD-ROM
here) and reads ``meta-data``, ``user-data`` and ``network-config`` from it. The names
carry a ``-``, which plain ISO 9660 does not allow, so they are given as Joliet and Rock
Ridge names (the ISO 9660 names are ``METADATA.;1`` and so on, which nobody reads).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pycdlib

LABEL = "cidata"
MAX_SEED_BYTES = 16 << 20
"""Largest seed written; cloud-init's user data is far smaller in practice."""


def _file(iso: pycdlib.PyCdlib, name: str, data: bytes) -> None:
    short = name.replace("-", "").upper()[:8]
    iso.add_fp(
        io.BytesIO(data),
        len(data),
        f"/{short}.;1",
        rr_name=name,
        joliet_path=f"/{name}",
    )


def build_seed(
    path: Path,
    *,
    meta_data: Mapping[str, Any],
    user_data: str,
    network_config: Mapping[str, Any] | None = None,
) -> None:
    """Write a cloud-init NoCloud seed at ``path`` (an ISO 9660 image, volume id ``cidata``,
    files ``meta-data``, ``user-data`` and, if given, ``network-config``), atomically.

    ``meta_data`` and ``network_config`` are written as JSON (which is YAML). ValueError if
    they are not JSON or the seed would exceed :data:`MAX_SEED_BYTES`."""
    files = {
        "meta-data": json.dumps(dict(meta_data), indent=1).encode(),
        "user-data": user_data.encode("utf-8"),
    }
    if network_config is not None:
        files["network-config"] = json.dumps(dict(network_config), indent=1).encode()
    if sum(len(data) for data in files.values()) > MAX_SEED_BYTES:
        raise ValueError(f"a cloud-init seed is at most {MAX_SEED_BYTES >> 20} MiB")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for name, data in files.items():
            _file(iso, name, data)
        path = Path(path)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            iso.write(str(partial))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        iso.close()
