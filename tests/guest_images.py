"""Guest images for tests, built once and kept outside the clone between runs (CI included).

The ``debian`` image takes a minute or more to build, so it is built into
``$USHER_IMAGE_CACHE/debian/<recipe>/`` (default ``/var/cache/usher-ci``), where ``<recipe>``
is :func:`usher.images.debian.recipe_digest`: a change of ``debian.py`` is a new build, and
the builds of older recipes are removed. ``USHER_REBUILD_IMAGES=1`` rebuilds it anyway.
Each test session gets its own copy in a storage directory of its own.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from usher.images.catalog import image_dir, read_manifest
from usher.images.debian import NAME, build_debian, recipe_digest

CACHE_ENV = "USHER_IMAGE_CACHE"
REBUILD_ENV = "USHER_REBUILD_IMAGES"
DEFAULT_CACHE = Path("/var/cache/usher-ci")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: two test runs never build into one cache."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def debian_image_into(storage: Path) -> None:
    """Copy the cached ``debian`` image of this recipe into ``storage``, building it first
    if the cache has none (or if ``USHER_REBUILD_IMAGES`` is set)."""
    root = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE) / "debian"
    root.mkdir(parents=True, exist_ok=True)
    cache = root / recipe_digest()
    with _locked(root / ".lock"):  # held while copying: another recipe's run prunes old ones
        if read_manifest(cache, NAME) is None or os.environ.get(REBUILD_ENV):
            began = time.monotonic()
            print(f"building the debian image into {cache}", file=sys.stderr)
            build_debian(cache, work_dir=root / "work", force=True)
            print(f"built in {time.monotonic() - began:.0f} s", file=sys.stderr)
        for old in root.iterdir():
            if old.is_dir() and old not in (cache, root / "work"):
                shutil.rmtree(old, ignore_errors=True)
        shutil.copytree(image_dir(cache, NAME), image_dir(storage, NAME))


@pytest.fixture(scope="session")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage directory of this session holding a copy of the ``debian`` image."""
    storage = tmp_path_factory.mktemp("debian-storage")
    debian_image_into(storage)
    return storage
