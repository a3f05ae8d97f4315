"""An incremental TAP 13 / KTAP v1 parser for kselftest output.

``TapParser.feed(line)`` takes one line at a time (as a binary prints it in a guest) and
returns the top-level results that line finished, so a caller can print each test as it
ends.  Comment lines (``# ...``) and stray output between two result lines are the
diagnostics of the second one, which is how ``kselftest_harness.h`` prints a test's
assertion messages before its ``not ok`` line.  Subtests (KTAP: an indented block before
its parent's result line; TAP 13 as ``run_kselftest.sh`` nests it: a block whose lines carry
one more ``# `` prefix) become the parent's ``subtests``.  ``finish()`` closes the
stream: a test that started (``#  RUN ...``) but never reported, or planned tests that
never ran, are listed so a wedged guest keeps what did finish.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Outcome = Literal["pass", "fail", "skip", "xfail", "xpass", "error"]
OUTCOMES: tuple[str, ...] = ("pass", "fail", "skip", "xfail", "xpass", "error")

_RESULT = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?(.*?)$")
_DIRECTIVE = re.compile(r"(?:^|\s+)#\s*(SKIP|TODO|XFAIL|XPASS)\b\s*(.*)$", re.IGNORECASE)
_PLAN = re.compile(r"^1\.\.(\d+)")
_VERSION = re.compile(r"^(?:K?TAP) version (\d+)")
_RUN = re.compile(r"^#\s+RUN\s+(\S+)")
_BAIL = re.compile(r"^Bail out!\s*(.*)$")


@dataclass
class TapResult:
    """One test's result: outcome, the directive's reason, diagnostics, subtests."""

    number: int
    name: str
    outcome: Outcome
    reason: str = ""
    diagnostics: list[str] = field(default_factory=list)
    subtests: list[TapResult] = field(default_factory=list)
    duration_s: float | None = None

    @property
    def failed(self) -> bool:
        """Whether the test failed or never reported (kselftest counts XPASS as no failure)."""
        return self.outcome in ("fail", "error")

    def to_json(self) -> dict[str, object]:
        """A JSON-able form."""
        return {
            "number": self.number,
            "name": self.name,
            "outcome": self.outcome,
            "reason": self.reason,
            "diagnostics": self.diagnostics,
            "subtests": [s.to_json() for s in self.subtests],
            "duration_s": self.duration_s,
        }


@dataclass
class TapReport:
    """A whole stream: its results in order, the plan, and what the stream left open."""

    results: list[TapResult] = field(default_factory=list)
    planned: int | None = None
    version: str = ""
    bail_out: str | None = None
    trailing: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many top-level results of each outcome."""
        found = {name: 0 for name in OUTCOMES}
        for result in self.results:
            found[result.outcome] += 1
        return found


#: a ``# `` prefix of nested TAP counts as this much indentation (beyond any real indent)
_PREFIX_INDENT = 10_000


@dataclass
class _Level:
    indent: int
    prefixes: int = 0
    results: list[TapResult] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    running: str | None = None
    planned: int | None = None
    children: list[TapResult] = field(default_factory=list)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _looks_tap(text: str) -> bool:
    return bool(_RESULT.match(text) or _PLAN.match(text) or _VERSION.match(text))


def _unprefix(line: str, most: int | None = None) -> tuple[int, str]:
    """Strip up to ``most`` leading ``# `` prefixes (all while TAP lies beneath when None)."""
    count = 0
    rest = line.strip()
    while rest.startswith("# ") and (most is None or count < most):
        inner = rest[2:].strip()
        if most is None and not (inner.startswith("# ") or _looks_tap(inner)):
            break
        rest = inner
        count += 1
    if count == 0 or (most is None and not _looks_tap(rest)):
        return 0, line
    return count, rest


def parse_result_line(text: str) -> tuple[bool, int | None, str, str, str] | None:
    """``(ok, number, name, directive, reason)`` of a result line, None for other lines."""
    match = _RESULT.match(text)
    if match is None:
        return None
    ok = match.group(1) == "ok"
    number = int(match.group(2)) if match.group(2) else None
    rest = match.group(3)
    directive = ""
    reason = ""
    found = _DIRECTIVE.search(rest)
    if found is not None:
        directive = found.group(1).upper()
        reason = found.group(2).strip()
        rest = rest[: found.start()]
    elif " #" in rest:  # kselftest's ``ok 3 name #  message``: a message, no directive
        rest, _, reason = rest.partition(" #")
        reason = reason.strip()
    return ok, number, rest.strip(), directive, reason


def outcome_of(ok: bool, directive: str) -> Outcome:
    """The outcome a result line means (``ok # SKIP`` is a skip, ``not ok # TODO`` an xfail)."""
    if directive == "SKIP":
        return "skip"
    if directive in ("TODO", "XFAIL"):
        return "xpass" if ok else "xfail"
    if directive == "XPASS":
        return "xpass"
    return "pass" if ok else "fail"


class TapParser:
    """Feed lines, get finished top-level results; ``finish()`` gives the whole report."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.report = TapReport()
        self._levels = [_Level(indent=0)]
        self._clock = clock
        self._last = clock() if clock is not None else 0.0

    def feed(self, line: str) -> list[TapResult]:
        """Parse one line; return the top-level results it completed (zero or one)."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        top = self._levels[-1]
        prefixes, body = _unprefix(line)
        looks_tap = _looks_tap(body.strip())
        if not looks_tap:  # a comment of the current block: drop that block's prefixes
            prefixes, body = _unprefix(line, top.prefixes)
        indent = prefixes * _PREFIX_INDENT + _indent(body)
        text = body.strip()
        if looks_tap and indent > top.indent:
            # an indented block: subtests of the result line that will follow it
            self._levels.append(_Level(indent=indent, prefixes=prefixes))
            top = self._levels[-1]
        while looks_tap and len(self._levels) > 1 and indent < top.indent:
            self._close_level()
            top = self._levels[-1]
        if (version := _VERSION.match(text)) and not self.report.version:
            self.report.version = version.group(1)
            return []
        if version:
            return []
        if plan := _PLAN.match(text):
            top.planned = int(plan.group(1))
            if len(self._levels) == 1:
                self.report.planned = top.planned
            return []
        if bail := _BAIL.match(text):
            self.report.bail_out = bail.group(1) or "bail out"
            top.pending.append(text)
            return []
        parsed = parse_result_line(text)
        if parsed is None:
            if run := _RUN.match(text):
                top.running = run.group(1)
            top.pending.append(_strip_comment(text))
            return []
        ok, number, name, directive, reason = parsed
        result = TapResult(
            number=number if number is not None else len(top.results) + 1,
            name=name or top.running or f"test {len(top.results) + 1}",
            outcome=outcome_of(ok, directive),
            reason=reason,
            diagnostics=top.pending,
            subtests=top.children,
        )
        top.children = []
        if self._clock is not None and len(self._levels) == 1:
            now = self._clock()
            result.duration_s = round(now - self._last, 3)
            self._last = now
        top.pending = []
        top.running = None
        top.results.append(result)
        if len(self._levels) == 1:
            self.report.results.append(result)
            return [result]
        return []

    def _close_level(self) -> None:
        """An indented block ended: its results are the subtests of the next result line."""
        child = self._levels.pop()
        parent = self._levels[-1]
        parent.children.extend(child.results)
        parent.pending.extend(child.pending)

    def running(self) -> str | None:
        """The test that started (``#  RUN name``) and has not reported yet, if any."""
        return self._levels[0].running

    def finish(self, cause: str | None = None) -> TapReport:
        """End of stream; ``cause`` (a hang, a crash) marks the unfinished test as an error.

        A test that started but never reported becomes an ``error`` result carrying its
        diagnostics; without a ``cause`` it is reported as ``no result line``.
        """
        while len(self._levels) > 1:
            self._close_level()
        top = self._levels[0]
        if top.running is not None:
            result = TapResult(
                number=len(top.results) + 1,
                name=top.running,
                outcome="error",
                reason=cause or "no result line (the binary ended without reporting it)",
                diagnostics=top.pending,
                subtests=top.children,
            )
            top.results.append(result)
            self.report.results.append(result)
            top.pending = []
            top.children = []
            top.running = None
        self.report.trailing = top.pending
        return self.report


def _strip_comment(text: str) -> str:
    if text.startswith("# "):
        return text[2:]
    if text == "#":
        return ""
    return text


def parse(text: str) -> TapReport:
    """Parse a whole captured TAP stream."""
    parser = TapParser()
    for line in text.splitlines():
        parser.feed(line)
    return parser.finish()
