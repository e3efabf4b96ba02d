"""The limits every value that enters Usher is held to, in one place.

Whatever a user, a node or a plugin hands the controller is stored as JSON and read back
later, by the controller after a restart among others. So a value is accepted only if it
reads back identically: integers within 64 bits, finite floats, strings without control
characters, and nothing deeper, longer or larger than the limits below. Names (of VMs,
clusters, nodes, images, users) match :data:`NAME_RE` in full, so no name carries a newline
into a listing, a log line or a command line, and none looks like an id.
"""

from __future__ import annotations

import math
import re
from typing import Any

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""Integers are 64-bit signed: what every JSON reader here (orjson, PostgreSQL) reads back."""

MAX_DEPTH = 8
"""Deepest nesting of lists and objects inside a free-form value (``kwargs``)."""
MAX_ITEMS = 1000
"""Most entries in one list or object of a free-form value."""
MAX_KEY = 128
"""Longest key of an object in a free-form value."""
MAX_STRING = 64 * 1024
"""Longest string in a free-form value (a cloud-init user-data script fits)."""
MAX_KWARGS_BYTES = 64 * 1024
"""Largest ``kwargs`` of a request, as JSON."""
MAX_TEXT = 1000
"""Longest free text (a description, a reason)."""
MAX_BODY_BYTES = 1024 * 1024
"""Largest JSON request body the API reads (image uploads have their own limit)."""
MAX_REFS = 10_000
"""Most VMs one request may name."""
MAX_LINK_MESSAGE = 8 * 1024 * 1024
"""Largest message on the link between the controller and an LNM, either way."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""A name of a VM, cluster, node or image: letters, digits, ``.``, ``_``, ``-``."""
NAME_PATTERN = rf"^{NAME_RE.pattern}$"
""":data:`NAME_RE` anchored, for pydantic's ``pattern=`` (whose ``$`` is the text's end)."""
PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:-]{0,199}")
"""A principal (user) name; ``:`` appears in node credentials' ``node:<name>``."""
PRINCIPAL_PATTERN = rf"^{PRINCIPAL_RE.pattern}$"
ID_RE = re.compile(r"(vm|op|ev|cmd|tok|join)-[0-9a-f]{12}")
"""What ids look like (:func:`usher.model.new_id`); no name may look like one."""
RESERVED_PRINCIPALS = frozenset({"admin", "system", "node-join"})
"""Principals of Usher's own: the bootstrap admin token's, plugins' actions', join tokens'.
No password or directory user may log in as one of them (nor as ``node:…``)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class BoundsError(ValueError):
    """A value outside the limits; the message says which limit and where."""


TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=/-]{0,62}")
"""A tag on a VM: like a name, and ``:``, ``=``, ``/`` for ``env=prod`` or ``team/web``."""
MAX_TAGS = 32
"""The most tags one VM may have."""
MAX_SNAPSHOTS = 32
"""The most snapshots one VM may have (each pins the guest data it holds)."""
MAX_DISK_GB = 16 * 1024
"""The largest disk of a VM, root or data, in GiB (16 TiB: well within what a qcow2 with its
default 64 KiB clusters addresses, and more than one VM should take of a shared storage)."""
MAX_DATA_DISKS = 16
"""The most data disks one VM may have (each is a virtio-blk PCI device of its own)."""

_SIZE = re.compile(r"(\d{1,20}) *(M|MiB|G|GiB|T|TiB)", re.IGNORECASE | re.ASCII)
_MIB_PER = {"m": 1, "mib": 1, "g": 1024, "gib": 1024, "t": 1024 * 1024, "tib": 1024 * 1024}


def parse_gib(text: str, what: str = "disk size") -> int:
    """A disk size written as ``8G``, ``8GiB``, ``2048M``/``2048MiB`` or ``1T``/``1TiB``
    (powers of 1024, any case), in whole GiB from 1 to :data:`MAX_DISK_GB`."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise BoundsError(
            f"invalid {what} {shown(text)}: write a whole number and a unit, M/MiB, G/GiB or "
            "T/TiB (powers of 1024), e.g. 8G"
        )
    mib = int(found.group(1)) * _MIB_PER[found.group(2).lower()]
    gib, rest = divmod(mib, 1024)
    if rest:
        raise BoundsError(f"invalid {what} {shown(text)}: not a whole number of GiB")
    return check_disk_gb(gib, f"{what} {text.strip()}")


def check_disk_gb(size_gb: int, what: str = "disk size") -> int:
    """A disk size in GiB: an integer from 1 to :data:`MAX_DISK_GB`."""
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise BoundsError(f"{what} must be a whole number of GiB, not {shown(size_gb)}")
    if not 1 <= size_gb <= MAX_DISK_GB:
        raise BoundsError(f"{what} must be 1 to {MAX_DISK_GB} GiB, not {shown(size_gb)}")
    return size_gb


def check_data_disks(disks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A VM's data disks: at most :data:`MAX_DATA_DISKS`, each exactly ``{"size_gb": N}``."""
    if len(disks) > MAX_DATA_DISKS:
        raise BoundsError(f"a VM has at most {MAX_DATA_DISKS} data disks, not {len(disks)}")
    for index, disk in enumerate(disks, start=1):
        if set(disk) != {"size_gb"}:
            raise BoundsError(f'data disk {index} must be {{"size_gb": N}}, not {shown(disk)}')
        check_disk_gb(disk["size_gb"], f"the size of data disk {index}")
    return disks


def check_tags(tags: list[str]) -> list[str]:
    """Valid tags, each once (in the order first given), at most :data:`MAX_TAGS`."""
    for tag in tags:
        if not TAG_RE.fullmatch(tag):
            raise BoundsError(
                f"invalid tag {shown(tag)}: 1-63 letters, digits, '.', '_', ':', '=', '/', "
                "'-', starting with a letter or digit"
            )
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise BoundsError(f"a VM has at most {MAX_TAGS} tags, not {len(unique)}")
    return unique


def is_name(value: str) -> bool:
    """A valid name that is not an id."""
    return NAME_RE.fullmatch(value) is not None and ID_RE.fullmatch(value) is None


def check_name(value: str, what: str = "name") -> str:
    if not NAME_RE.fullmatch(value):
        raise BoundsError(
            f"invalid {what} {shown(value)}: 1-63 letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    if ID_RE.fullmatch(value):
        raise BoundsError(f"invalid {what} {shown(value)}: it looks like an id")
    return value


def is_reserved_principal(name: str) -> bool:
    return name in RESERVED_PRINCIPALS or name.startswith("node:")


def check_text(value: str, what: str = "text", limit: int = MAX_TEXT) -> str:
    """Free text on one line: bounded, no control characters."""
    if len(value) > limit:
        raise BoundsError(f"{what} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise BoundsError(f"{what} contains control characters")
    return value


def check_json(value: Any, what: str = "value", *, limit: int = MAX_KWARGS_BYTES) -> Any:
    """``value`` if it is JSON that reads back identically and within the limits.

    Objects have string keys of at most :data:`MAX_KEY` characters without control
    characters; strings may hold tabs and line breaks but no other control character;
    integers are 64-bit; floats are finite; nesting, sizes and the whole as JSON are bounded.
    """
    budget = [limit]
    _check(value, what, 0, budget)
    if budget[0] < 0:
        raise BoundsError(f"{what}: larger than {limit} bytes as JSON")
    return value


def _check(value: Any, where: str, depth: int, budget: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise BoundsError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        cost = 5
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise BoundsError(f"{where}: integer {shown(value)} is outside 64 bits")
        cost = 20
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise BoundsError(f"{where}: {value} is not a finite number")
        cost = 24
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise BoundsError(f"{where}: string longer than {MAX_STRING} characters")
        if _CONTROL_BUT_TEXT.search(value):
            raise BoundsError(f"{where}: string contains control characters")
        cost = len(value.encode("utf-8", "surrogatepass")) + 2
    elif isinstance(value, list | tuple):
        if len(value) > MAX_ITEMS:
            raise BoundsError(f"{where}: more than {MAX_ITEMS} items")
        cost = 2
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]", depth + 1, budget)
    elif isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise BoundsError(f"{where}: more than {MAX_ITEMS} keys")
        cost = 2
        for key, item in value.items():
            if not isinstance(key, str):
                raise BoundsError(f"{where}: key {shown(key)} is not a string")
            if len(key) > MAX_KEY or _CONTROL.search(key) or not key:
                raise BoundsError(
                    f"{where}: key {shown(key)} is empty, longer than {MAX_KEY} characters "
                    "or holds control characters"
                )
            cost += len(key) + 4
            _check(item, f"{where}.{key}", depth + 1, budget)
    else:
        raise BoundsError(f"{where}: {type(value).__name__} is not a JSON value")
    budget[0] -= cost


def shown(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a refused value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}… ({len(text)} chars)"
