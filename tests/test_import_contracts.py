"""The import contracts: the layers ``lint-imports`` checks (configured in pyproject.toml),
no private name imported across modules, and plugins through their front door only."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "usher"
PLUGIN_SOURCES = [
    *sorted((SRC / "plugins").glob("*.py")),
    *sorted((ROOT / "examples" / "usher-example-plugin").glob("src/**/*.py")),
]


def usher_imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) of every ``import usher…`` / ``from usher… import`` in
    ``path``, type-checking-only imports included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "usher" or node.module.startswith("usher."):
                yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "usher" or alias.name.startswith("usher."):
                    yield node.lineno, alias.name, []


def test_lint_imports_keeps_every_contract() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout and "KEPT" in done.stdout, done.stdout


def test_no_private_name_is_imported_across_modules() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}.{name}"
        for path in sorted(SRC.rglob("*.py"))
        for line, module, names in usher_imports(path)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not found, "\n".join(found)


def test_plugins_import_only_the_front_door_and_the_model() -> None:
    assert len(PLUGIN_SOURCES) > 15  # the built-in plugins and the example's
    found = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in PLUGIN_SOURCES
        for line, module, _names in usher_imports(path)
        if not (
            module in ("usher.plugin", "usher.model", "usher.cli.api")
            or (module.startswith("usher.plugins.") and path.is_relative_to(SRC))
        )
    ]
    assert not found, "\n".join(found)
