"""docs/plugins.md: its generated parts match the hookspecs and the example plugin."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from usher import hookspecs
from usher.event_types import EVENTS

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen_plugin_docs.py"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_plugin_docs", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_hook_is_in_the_reference_with_its_docstring(gen: ModuleType) -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    reference = doc.split("<!-- BEGIN GENERATED: hook reference -->")[1]
    specs = [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "usher_spec")]
    assert {"request", "stop_request", "usher_event", "schedule"} <= set(specs)
    for name in specs:
        assert f"#### `{name}`" in reference, name
        first_line = (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
        assert gen.rst_to_markdown(first_line) in reference, name
    assert "### Request hooks" in reference and "### Notification hooks" in reference
    assert "authenticate(token: str) -> Principal | None" in reference


def test_a_stale_part_is_rewritten_and_the_check_fails(
    gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    stale = doc.replace("#### `usher_event`", "#### `usher_evnt`")
    assert stale != doc and gen.fill(stale) == doc
    copy = tmp_path / "plugins.md"
    copy.write_text(stale)
    monkeypatch.setattr(gen, "DOC", copy)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and copy.read_text() == doc
    with pytest.raises(ValueError, match="markers of the 'example plugin' part"):
        gen.fill(doc.replace("<!-- END GENERATED: example plugin -->", ""))


def test_rst_becomes_markdown(gen: ModuleType) -> None:
    text = "See :class:`~usher.model.OpRequest` and ``x = 1``::\n\n    [plugins]\n    a = 1\n\nEnd."
    assert gen.rst_to_markdown(text) == (
        "See `OpRequest` and `x = 1`:\n\n```\n[plugins]\na = 1\n```\n\nEnd."
    )


def test_every_event_is_in_the_table_with_its_fields(gen: ModuleType) -> None:
    doc = (ROOT / "docs" / "plugins.md").read_text()
    table = doc.split("<!-- BEGIN GENERATED: events -->")[1].split("<!-- END GENERATED")[0]
    rows = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in table.splitlines()
        if line.startswith("| `")
    }
    for name, model in EVENTS.items():
        family = next((f"`<op>{s}`" for s in ("_request", "_failure") if name.endswith(s)), None)
        row = next((r for key, r in rows.items() if f"`{name}`" in key.split(", ")), None)
        row = row or next(r for key, r in rows.items() if family and family in key)
        for field_name, field in model.model_fields.items():
            assert f"`{field.alias or field_name}`: " in row, (name, field_name)
    assert "`before`: Capacity \\| None: what it was recorded with" in rows["`node_capacity`"]
    assert gen.type_name(dict[str, list[int | None]]) == "dict[str, list[int | None]]"
