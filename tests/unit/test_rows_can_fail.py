"""Every verdict row of every scenario can fail: no constant ``ok``, no self-comparison.

Scans the host and guest halves of the registered scenarios (``harness/scenarios``) with
``ast`` for the row constructors they use — ``Check(...)``, ``Check.equal/.effect``,
``_row(...)``, ``CheckTable.add`` (``table.add``) and dict rows ``{"ok": ...}`` — and
flags a row whose ``ok`` is the constant ``True``, or whose expected and got are the same
expression or both constants (a row that compares nothing the system produced).  A
constant ``False`` is allowed: such rows are failure reports added only on a failing path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_FILES = sorted((ROOT / "harness" / "scenarios").rglob("*.py"))

#: callee name -> (index of expected, index of got, index of ok or None)
ROW_CALLS = {
    "Check": (1, 2, 3),
    "equal": (1, 2, None),
    "effect": (1, 2, None),
    "_row": (1, 2, 3),
    "add": (1, 2, 3),
}


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        owner = func.value
        if func.attr in ("equal", "effect") and isinstance(owner, ast.Name) and owner.id == "Check":
            return func.attr
        if func.attr == "add" and isinstance(owner, ast.Name) and owner.id in ("table", "t"):
            return "add"
    return None


def _arg(call: ast.Call, index: int | None, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if index is not None and index < len(call.args):
        return call.args[index]
    return None


def constant_rows(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: why`` for each row in ``source`` that cannot fail."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Dict):
            fields = {
                k.value: v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant)
            }
            ok = fields.get("ok")
            is_row = "expected" in fields or "got" in fields
            if is_row and isinstance(ok, ast.Constant) and ok.value is True:
                found.append(f"{filename}:{node.lineno}: dict row with ok=True")
            continue
        if not isinstance(node, ast.Call):
            continue
        callee = _callee(node)
        if callee not in ROW_CALLS or (callee == "Check" and len(node.args) < 3):
            continue
        i_exp, i_got, i_ok = ROW_CALLS[callee]
        expected = _arg(node, i_exp, "expected")
        got = _arg(node, i_got, "got")
        ok = _arg(node, i_ok, "ok")
        where = f"{filename}:{node.lineno}"
        if isinstance(ok, ast.Constant) and ok.value is True:
            found.append(f"{where}: ok is the constant True")
        elif ok is None and expected is not None and got is not None:
            if ast.dump(expected) == ast.dump(got):
                found.append(f"{where}: expected and got are the same expression")
            elif isinstance(expected, ast.Constant) and isinstance(got, ast.Constant):
                found.append(f"{where}: expected and got are both constants")
    return found


def test_scanner_catches_the_shapes_it_is_for() -> None:
    bad = """
Check("ids allocated", "ids", [a, b], True)
Check.equal("x", value, value)
Check.equal("x", True, False)
_row("self-check", "ok", "ok")
table.add("nest_parent", flags, flags)
rows.append({"name": "n", "expected": 1, "got": 1, "ok": True})
"""
    good = """
Check("ids", "4 distinct", ids, len(set(ids)) == 4)
Check.equal("x", 1, observed)
Check("missing cdev", "a cdev", None, False)
_row("dma", "A", where)
table.add("flags", expected_flags, got_flags)
"""
    assert len(constant_rows(bad)) == 6
    assert constant_rows(good) == []


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_row_of_a_scenario_is_constant(path: Path) -> None:
    found = constant_rows(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "rows that cannot fail:\n" + "\n".join(found)
