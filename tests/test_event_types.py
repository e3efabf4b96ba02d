"""Every event the core and built-in plugins emit is declared in ``usher.event_types``.

Read from the source: each ``.emit(name, …)`` and ``Event(name=…)`` under ``src/usher``, its
name resolved (a literal; an f-string over an operation kind, expanded over every
:class:`OpKind`; either branch of a conditional; a loop variable over a literal tuple).
What the events carry is checked at run time by ``test_e2e_events.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from usher.event_types import ENVELOPE, EVENTS, UndeclaredEvent, validate_event
from usher.model import Event, OpKind

SRC = Path(__file__).resolve().parent.parent / "src" / "usher"
NOT_THE_BUS = ("cli", "client")
"""Packages whose ``.emit`` is something else (the CLI's output), as in the ``ush`` commands
plugins add (``plugins/*_ush.py``)."""
PASS_THROUGH = {"ctrl/context.py:emit", "ctrl/events.py:emit"}
"""Functions that emit the name they are given (their callers are read instead)."""


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_kind(expr: ast.expr) -> bool:
    """``x.kind`` or ``x.kind.value``: an operation kind."""
    if isinstance(expr, ast.Attribute) and expr.attr == "value":
        expr = expr.value
    return isinstance(expr, ast.Attribute) and expr.attr == "kind"


def _enclosing(node: ast.AST, parents: dict[ast.AST, ast.AST], kind: type) -> list[ast.AST]:
    found = []
    while node in parents:
        node = parents[node]
        if isinstance(node, kind):
            found.append(node)
    return found


def _names(expr: ast.expr, parents: dict[ast.AST, ast.AST]) -> set[str] | str:
    """The event names ``expr`` may be, or why it cannot be read."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if _is_kind(expr):
        return {kind.value for kind in OpKind}
    if isinstance(expr, ast.JoinedStr):
        names = {""}
        for part in expr.values:
            if isinstance(part, ast.Constant):
                names = {name + part.value for name in names}
            elif isinstance(part, ast.FormattedValue) and _is_kind(part.value):
                names = {name + kind.value for name in names for kind in OpKind}
            else:
                return f"an f-string over {ast.unparse(part)}"
        return names
    if isinstance(expr, ast.IfExp):
        body, orelse = _names(expr.body, parents), _names(expr.orelse, parents)
        if isinstance(body, str) or isinstance(orelse, str):
            return body if isinstance(body, str) else str(orelse)
        return body | orelse
    if isinstance(expr, ast.Name):
        for loop in _enclosing(expr, parents, ast.For):
            assert isinstance(loop, ast.For)
            if isinstance(loop.target, ast.Name) and loop.target.id == expr.id:
                if not isinstance(loop.iter, ast.Tuple | ast.List):
                    return f"a loop over {ast.unparse(loop.iter)}"
                found: set[str] = set()
                for element in loop.iter.elts:
                    names = _names(element, parents)
                    if isinstance(names, str):
                        return names
                    found |= names
                return found
    return ast.unparse(expr)


def _event_name(call: ast.Call) -> ast.expr | None:
    """The name argument of an event emitted by ``call``, or None if it emits none."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "emit":
        return call.args[0] if call.args else None
    if isinstance(func, ast.Name) and func.id == "Event":
        return next((k.value for k in call.keywords if k.arg == "name"), None)
    return None


def emitted() -> tuple[dict[str, set[str]], list[str], set[str]]:
    """Event name: where it is emitted; what could not be read; the pass-throughs."""
    where: dict[str, set[str]] = {}
    unread: list[str] = []
    passing: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.split("/")[0] in NOT_THE_BUS or rel.endswith("_ush.py"):
            continue
        tree = ast.parse(path.read_text(), rel)
        parents = _parents(tree)
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or (expr := _event_name(call)) is None:
                continue
            funcs = _enclosing(call, parents, ast.FunctionDef | ast.AsyncFunctionDef)
            func = funcs[0] if funcs else None
            assert func is None or isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
            params = {a.arg for a in func.args.args} if func else set()
            if isinstance(expr, ast.Name) and expr.id in params:
                passing.add(f"{rel}:{func.name if func else '?'}")
                continue
            names = _names(expr, parents)
            if isinstance(names, str):
                unread.append(f"{rel}:{call.lineno}: {names}")
                continue
            for name in names:
                where.setdefault(name, set()).add(f"{rel}:{call.lineno}")
    return where, unread, passing


def test_every_emitted_event_is_declared_and_every_declared_one_emitted() -> None:
    where, unread, passing = emitted()
    assert unread == [], "event names this test cannot read; teach it, or use a literal"
    assert passing == PASS_THROUGH
    undeclared = {name: sorted(at) for name, at in where.items() if name not in EVENTS}
    assert undeclared == {}, "declare them in usher.event_types"
    assert set(EVENTS) - set(where) == set(), "declared, but nothing emits them"
    # the reading is not vacuous: the per-kind f-strings and the loop were expanded
    assert {"migrate_failure", "cycle_request", "pause", "ha_unprotect", "plugin_error"} <= set(
        where
    )


def test_every_payload_model_says_when_and_what() -> None:
    for name, model in EVENTS.items():
        assert (model.__doc__ or "").strip(), f"{model.__name__} ({name}) has no docstring"
        assert set(getattr(model, "sets", ())) <= set(ENVELOPE), name
        assert model.model_config.get("extra") == "forbid", name


def test_validate_event() -> None:
    ok = Event(name="node_lost", node="n1", data={"reason": "missed heartbeats"})
    assert validate_event(ok).model_dump() == {"reason": "missed heartbeats"}
    moved = Event(name="start", vm_id="v", data={"from": "n1", "to": "n2", "cold": True})
    assert validate_event(moved).model_dump(by_alias=True)["from"] == "n1"
    with pytest.raises(UndeclaredEvent):
        validate_event(Event(name="nodes_lost"))
    with pytest.raises(ValidationError):
        validate_event(Event(name="node_lost", node="n1", data={"reason": "x", "extra": 1}))
    with pytest.raises(ValidationError):
        validate_event(Event(name="node_lost", node="n1", data={}))
    with pytest.raises(ValueError, match="sets vm_id"):
        validate_event(Event(name="node_lost", node="n1", vm_id="v", data={"reason": "x"}))


def test_request_events_carry_the_request_but_its_principal() -> None:
    from usher.model import OpRequest

    assert set(EVENTS["stop_request"].model_fields) == set(OpRequest.model_fields) - {"principal"}
    assert EVENTS["request"] is EVENTS["migrate_request"]


@pytest.mark.parametrize("module", ["usher.hookspecs", "usher.event_types"])
def test_contracts_import_no_controller(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "bad = sorted(m for m in sys.modules if m.startswith(('usher.ctrl', 'fastapi'))); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
