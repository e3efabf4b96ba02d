"""Write the generated parts of ``docs/plugins.md``: the hook reference (from the docstrings
of :mod:`usher.hookspecs`), the table of events (from their declarations in
:mod:`usher.event_types`) and the source of the example plugin package.

    python scripts/gen_plugin_docs.py          # rewrite docs/plugins.md
    python scripts/gen_plugin_docs.py --check  # exit 1 if it is out of date

Each generated part sits between ``<!-- BEGIN GENERATED: <part> -->`` and
``<!-- END GENERATED: <part> -->``; everything else in the file is written by hand.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from usher import event_types, hookspecs
from usher.model import OpKind

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "usher-example-plugin"
EXAMPLE_FILES = (
    "pyproject.toml",
    "src/usher_example_plugin/__init__.py",
    "src/usher_example_plugin/commands.py",
)
SECTION = re.compile(r"^# --- (.+?) -+$")
ROLE = re.compile(r":\w+:`~?([\w.]+)`")


def rst_to_markdown(text: str) -> str:
    """The reST of Usher's docstrings as Markdown: literals, roles and ``::`` blocks."""
    text = ROLE.sub(lambda m: f"`{m[1].rsplit('.', 1)[-1]}`", text)
    text = re.sub(r"``(.+?)``", r"`\1`", text, flags=re.S)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.endswith("::"):
            out.append(line)
            i += 1
            continue
        out.append(line[:-1] if line.strip() != "::" else "")
        i += 1
        block: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
            block.append(lines[i][4:])
            i += 1
        code = "\n".join(block).strip("\n")
        out += ["", "```", code, "```", ""]
    return "\n".join(out).strip()


def hooks_by_section(module: ModuleType) -> list[tuple[str, list[Callable[..., Any]]]]:
    """The hook specifications in source order, grouped under the ``# --- x ---`` comments."""
    sections: list[tuple[str, list[Callable[..., Any]]]] = []
    for line in inspect.getsource(module).splitlines():
        if match := SECTION.match(line):
            sections.append((match[1], []))
        elif line.startswith("def ") and sections:
            func = getattr(module, line[4:].split("(", 1)[0])
            if hasattr(func, f"{module.PROJECT}_spec"):
                sections[-1][1].append(func)
    return [(title, funcs) for title, funcs in sections if funcs]


def _signature(func: Callable[..., Any]) -> str:
    return f"{func.__name__}{inspect.signature(func)}".replace("'", "")


def hook_reference(module: ModuleType = hookspecs) -> str:
    """The reference: the module's introduction, then every hook by section."""
    parts = [rst_to_markdown(inspect.getdoc(module) or "")]
    for title, funcs in hooks_by_section(module):
        title = title if title.endswith("hooks") else f"{title} hooks"
        parts.append(f"### {title[0].upper()}{title[1:]}")
        for func in funcs:
            spec = getattr(func, f"{module.PROJECT}_spec")
            first = (
                "\n\n*The first answer other than `None` wins.*" if spec.get("firstresult") else ""
            )
            parts.append(f"#### `{func.__name__}`\n\n```python\n{_signature(func)}\n```")
            parts.append(rst_to_markdown(inspect.getdoc(func) or "") + first)
    return "\n\n".join(parts)


def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: ``Capacity | None``, ``dict[str, Any]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).removeprefix("typing."))


def _event_names(names: list[str]) -> str:
    """``names`` in backquotes, a family over every operation kind written ``<op>_x``."""
    for suffix in ("_request", "_failure"):
        family = [f"{kind.value}{suffix}" for kind in OpKind]
        if set(family) <= set(names):
            names = [name for name in names if name not in family] + [f"<op>{suffix}"]
    return ", ".join(f"`{name}`" for name in names)


def _fields(model: type[BaseModel]) -> str:
    parts = []
    for name, field in model.model_fields.items():
        shown = f"`{field.alias or name}`: {type_name(field.annotation)}"
        if not field.is_required():
            shown += " (optional)"
        if field.description:
            shown += f": {rst_to_markdown(field.description)}"
        parts.append(shown)
    return "; ".join(parts) or "(none)"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def event_table(module: ModuleType = event_types) -> str:
    """The module's introduction, then one row per payload model: the events that carry it,
    when they fire, the fields of their ``data``, and which other fields of the event they
    set."""
    by_model: dict[type[BaseModel], list[str]] = {}
    for name, model in module.EVENTS.items():
        by_model.setdefault(model, []).append(name)
    rows = [
        "| event | when, and who acts on it | `data` | sets |",
        "| --- | --- | --- | --- |",
    ]
    for model, names in by_model.items():
        sets = ", ".join(f"`{name}`" for name in getattr(model, "sets", ())) or "none"
        when = rst_to_markdown(inspect.getdoc(model) or "")
        rows.append(f"| {_event_names(names)} | {_cell(when)} | {_cell(_fields(model))} | {sets} |")
    kinds = ", ".join(f"`{kind.value}`" for kind in OpKind)
    intro = rst_to_markdown(inspect.getdoc(module) or "")
    return f"{intro}\n\n" + "\n".join(rows) + f"\n\nOperations (`<op>`) are {kinds}."


def example_sources(root: Path = EXAMPLE) -> str:
    """The example plugin package, file by file."""
    parts = []
    for name in EXAMPLE_FILES:
        lang = "toml" if name.endswith(".toml") else "python"
        text = (root / name).read_text().rstrip("\n")
        parts.append(f"`{root.name}/{name}`:\n\n```{lang}\n{text}\n```")
    return "\n\n".join(parts)


PARTS: dict[str, Callable[[], str]] = {
    "events": event_table,
    "hook reference": hook_reference,
    "example plugin": example_sources,
}


def fill(doc: str, parts: dict[str, Callable[[], str]] = PARTS) -> str:
    """``doc`` with each generated part replaced by what its generator says now."""
    for name, generate in parts.items():
        begin, end = f"<!-- BEGIN GENERATED: {name} -->", f"<!-- END GENERATED: {name} -->"
        if begin not in doc or end not in doc:
            raise ValueError(f"{DOC.name} lacks the markers of the {name!r} part")
        head, rest = doc.split(begin, 1)
        _old, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n\n{generate()}\n\n{end}{tail}"
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    current = DOC.read_text()
    wanted = fill(current)
    if args.check:
        if current != wanted:
            print(f"{DOC} is out of date: run python scripts/gen_plugin_docs.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
