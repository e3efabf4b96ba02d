"""Usher: a virtual-machine cluster manager whose policy lives in plugins."""

from usher.hookspecs import Veto, hookimpl

__all__ = ["Veto", "__version__", "hookimpl"]
__version__ = "0.1.0"
