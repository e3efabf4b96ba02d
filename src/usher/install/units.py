"""The systemd units of the controller and the LNM, rendered for one host."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

Role = Literal["ctrl", "lnm"]
UNIT_DIR = Path("/etc/systemd/system")


def unit_name(role: Role) -> str:
    return f"usher-{role}.service"


def render(
    role: Role,
    *,
    usher: Path,
    user: str,
    storage: Path,
    config_dir: Path,
    groups: list[str] | None = None,
) -> str:
    """The unit of ``role`` running the ``usher`` executable at ``usher`` as ``user``, with
    write access to the shared ``storage`` and its config in ``config_dir``; ``groups`` are
    the LNM's supplementary groups (e.g. ``kvm``)."""
    template = files("usher.install").joinpath(unit_name(role)).read_text()
    values = {
        "@USHER@": str(usher),
        "@USER@": user,
        "@STORAGE@": str(storage),
        "@CONFIG_DIR@": str(config_dir),
        "@GROUPS@": " ".join(groups or []),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    return template
