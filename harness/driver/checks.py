"""Tables of checks (name, expected, got, ok) that guest halves of scenarios return.

``CheckTable.errno(name, EINVAL, ioas.map, ...)`` records what ``expect_errno`` would
assert without stopping at the first mismatch, so one run reports every row; the host
asserts ``table["ok"]`` and prints the rows.  Rows are plain JSON-able dicts.

Each row has a ``kind``: ``errno`` rows are *effect* checks (the errno the kernel
returned, against the one a correct kernel must return), ``succeeds`` rows are *setup*
checks (a step the story needs worked); ``add`` rows say which they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

from harness.driver.errors import IoctlError, dispose, errno_name, operation_name

P = ParamSpec("P")
R = TypeVar("R")

Row = dict[str, Any]


def _plain(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return repr(value)


class CheckTable:
    """Rows of checks, in the order they ran."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[Row] = []

    def add(
        self,
        name: str,
        expected: object,
        got: object,
        ok: bool | None = None,
        kind: str = "effect",
        **extra: object,
    ) -> bool:
        """Record one row; ``ok`` defaults to ``expected == got``; ``kind`` effect or setup."""
        passed = expected == got if ok is None else ok
        row: Row = {
            "name": name,
            "expected": _plain(expected),
            "got": _plain(got),
            "ok": passed,
            "kind": kind,
        }
        row.update({k: _plain(v) for k, v in extra.items() if v not in (None, "")})
        self.rows.append(row)
        return passed

    def errno(
        self,
        name: str,
        expected: int,
        fn: Callable[P, R],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> IoctlError | None:
        """Run ``fn`` expecting it to fail with ``expected``; the error, or None on success."""
        try:
            result = fn(*args, **kwargs)
        except IoctlError as err:
            self.add(name, errno_name(expected), err.errno_name, ioctl=err.ioctl)
            return err
        dispose(result)
        self.add(name, errno_name(expected), "success", ioctl=operation_name(fn))
        return None

    def succeeds(
        self, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R | None:
        """Run ``fn`` expecting success; its result, or None (with a failed row) on IoctlError."""
        try:
            result = fn(*args, **kwargs)
        except IoctlError as err:
            self.add(name, "success", err.errno_name, kind="setup", ioctl=err.ioctl, note=str(err))
            return None
        self.add(name, "success", "success", kind="setup", ioctl=operation_name(fn))
        return result

    @property
    def ok(self) -> bool:
        return all(row["ok"] for row in self.rows)

    def failures(self) -> list[Row]:
        return [row for row in self.rows if not row["ok"]]

    def result(self, **extra: object) -> dict[str, Any]:
        """The JSON-able answer of a guest method: title, ok, rows and any extra fields."""
        return {"title": self.title, "ok": self.ok, "rows": self.rows, **extra}


def format_rows(rows: Iterable[Mapping[str, Any]], columns: tuple[str, ...] = ()) -> str:
    """A fixed-width text table of ``rows`` (failed rows marked ``FAIL``)."""
    rows = list(rows)
    if not columns:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(k for k in row if k != "ok"))
        columns = tuple(seen)
    header = ("", *columns)
    body = [
        ("ok" if row.get("ok") else "FAIL", *(_cell(row.get(c)) for c in columns)) for row in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True))
        for line in [header, *body]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)
