"""cloud-init NoCloud seeds: a small ISO 9660 image, volume id ``cidata``, made with pycdlib.

cloud-init's NoCloud data source finds the seed by its label (``blkid`` sees ``cidata`` on
any block device: a CD-ROM here) and reads ``meta-data``, ``user-data`` and
``network-config`` from it. The names carry a ``-``, which plain ISO 9660 does not allow, so
they are given as Rock Ridge names (what Linux's isofs shows when it mounts the seed) and as
Joliet names (what other readers use); the ISO 9660 names (``METADATA.;1`` …) go unread.

``meta-data`` and ``network-config`` are written as JSON, which YAML reads too, in the subset
PyYAML (cloud-init's parser) reads back exactly: UTF-8, with every character YAML does not
take literally in a document (control characters, line separators, byte-order marks, lone
surrogates never) written as a ``\\uXXXX`` escape.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pycdlib

LABEL = "cidata"
MAX_SEED_BYTES = 16 << 20
"""Largest seed content written (all files together); real user data is far smaller."""

_YAML_LITERAL = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
    "\U00010000-\U0010ffff]"
)
"""A character YAML would not read back as itself from a UTF-8 document: what is not in
YAML's printable set, plus NEL, LS, PS (YAML line breaks) and U+FEFF (a byte-order mark)."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class SeedError(ValueError):
    """The seed's content cannot be written as asked; the message says which part and why."""


def build_seed(
    path: Path,
    *,
    meta_data: Mapping[str, Any],
    user_data: str,
    network_config: Mapping[str, Any] | None = None,
) -> None:
    """Write a cloud-init NoCloud seed at ``path`` (an ISO 9660 image, volume id ``cidata``,
    files ``meta-data``, ``user-data`` and, if given, ``network-config``), atomically.

    ``user_data`` is written as UTF-8, byte for byte; ``meta_data`` and ``network_config`` as
    JSON. :class:`SeedError` (a ValueError) if a part is not a mapping, holds what JSON cannot
    say (objects of other types, NaN, lone surrogates), or the seed would exceed
    :data:`MAX_SEED_BYTES`; nothing is written then. The file is written to a temporary name
    in the same directory, flushed and renamed over ``path``: readers see the old seed or the
    new one, never part of one.
    """
    files = {
        "meta-data": _json_file("meta-data", meta_data),
        "user-data": _text_file("user-data", user_data),
    }
    if network_config is not None:
        files["network-config"] = _json_file("network-config", network_config)
    total = sum(len(data) for data in files.values())
    if total > MAX_SEED_BYTES:
        raise SeedError(
            f"a cloud-init seed holds at most {MAX_SEED_BYTES >> 20} MiB; this one has "
            f"{total} bytes"
        )
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                f"/{name.replace('-', '').upper()[:8]}.;1",
                rr_name=name,
                joliet_path=f"/{name}",
            )
        _write_atomically(Path(path), iso)
    finally:
        iso.close()


def _text_file(name: str, text: str) -> bytes:
    if not isinstance(text, str):
        raise SeedError(f"{name} must be text, not {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SeedError(f"{name} is not valid Unicode text at character {exc.start}") from None


def _json_file(name: str, value: Mapping[str, Any]) -> bytes:
    if not isinstance(value, Mapping):
        raise SeedError(f"{name} must be a mapping, not {type(value).__name__}")
    try:
        text = json.dumps(dict(value), indent=1, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SeedError(f"{name} cannot be written as JSON: {exc}") from None
    if _SURROGATE.search(text):
        raise SeedError(f"{name} holds a lone surrogate, which is no Unicode character")
    return _YAML_LITERAL.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode()


def _write_atomically(path: Path, iso: pycdlib.PyCdlib) -> None:
    """Write ``iso`` at ``path`` readable by its owner only (QEMU runs as the LNM's user): a
    seed holds the user's own user data, which may hold secrets."""
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
