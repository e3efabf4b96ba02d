"""Usher: a virtual-machine cluster manager whose policy lives in plugins."""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: the ush launcher does not import typing)
if TYPE_CHECKING:
    from typing import Any

    from usher.hookspecs import Veto, hookimpl

__all__ = ["Veto", "__version__", "hookimpl"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``hookimpl`` and ``Veto`` load pluggy on first use: a command-line client that never
    touches plugins does not pay for it."""
    if name in ("Veto", "hookimpl"):
        from usher import hookspecs

        return getattr(hookspecs, name)
    raise AttributeError(f"module 'usher' has no attribute {name!r}")
