"""Debian packages, fetched with ``apt-get download`` into a cache and unpacked with dpkg-deb.

The cache keeps each ``.deb`` under the name ``apt-get download`` gives it, and a cached file
is used only while its SHA256 matches what apt says about the candidate version: a newer
package in the archive means a new download.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from usher.images.catalog import ImageError

Progress = Callable[[str], None]
T = TypeVar("T")


class AptError(ImageError):
    """An apt command failed."""


def _run(args: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise AptError(
            f"{args[0]} is not installed: images are built from Debian packages"
        ) from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("W:")]
        raise AptError(f"{' '.join(args)} failed: {' '.join(lines) or proc.returncode}")
    return proc.stdout


def _fields(record: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in record.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith(" "):
            fields[key] = value
    return fields


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract(deb: Path, dest: Path) -> None:
    """Unpack the files of ``deb`` under ``dest`` (no maintainer scripts run)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])


class DebCache:
    """Fetches packages into ``directory``; runs ``apt-get update`` once if apt has stale or
    no package lists."""

    def __init__(self, directory: Path, progress: Progress) -> None:
        self.directory = directory
        self.progress = progress
        self._updated = False

    def dependency(self, package: str, prefix: str) -> str:
        """The package that ``package`` depends on whose name starts with ``prefix``
        (``linux-image-cloud-amd64`` → ``linux-image-6.1.0-…-cloud-amd64``)."""
        return self._with_update(lambda: self._dependency(package, prefix))

    def fetch(self, *packages: str) -> list[Path]:
        """The ``.deb`` files of the candidate versions of ``packages``, downloaded unless
        cached."""
        return self._with_update(lambda: [self._fetch(r) for r in self._show(packages)])

    def _with_update(self, action: Callable[[], T]) -> T:
        try:
            return action()
        except AptError:
            if self._updated:
                raise
        self.progress("updating the apt package lists")
        try:
            _run(["apt-get", "update"])
        except AptError as exc:
            raise AptError(f"{exc} (updating package lists needs root)") from exc
        self._updated = True
        return action()

    def _show(self, packages: tuple[str, ...]) -> list[dict[str, str]]:
        """apt's record of each package's candidate version, in the order asked."""
        out = _run(["apt-cache", "show", "--no-all-versions", *packages])
        records = {fields.get("Package"): fields for fields in map(_fields, out.split("\n\n"))}
        missing = [package for package in packages if package not in records]
        if missing:
            raise AptError(f"apt knows no package {', '.join(missing)}")
        return [records[package] for package in packages]

    def _dependency(self, package: str, prefix: str) -> str:
        (record,) = self._show((package,))
        for alternatives in record.get("Depends", "").split(","):
            name = alternatives.split("|")[0].split()[0]
            if name.startswith(prefix):
                return name
        raise AptError(f"{package} depends on no {prefix}* package")

    def _fetch(self, record: dict[str, str]) -> Path:
        try:
            package, version = record["Package"], record["Version"]
            arch, sha256 = record["Architecture"], record["SHA256"]
        except KeyError as exc:
            raise AptError(f"apt-cache show gave no {exc} field") from None
        deb = self.directory / f"{package}_{version.replace(':', '%3a')}_{arch}.deb"
        if deb.exists() and _sha256(deb) == sha256:
            self.progress(f"using cached {deb.name}")
            return deb
        self.progress(f"downloading {package} {version}")
        self.directory.mkdir(parents=True, exist_ok=True)
        deb.unlink(missing_ok=True)
        _run(["apt-get", "download", f"{package}={version}"], cwd=self.directory)
        if not deb.exists() or _sha256(deb) != sha256:
            raise AptError(f"apt-get download did not leave a good {deb.name}")
        return deb
