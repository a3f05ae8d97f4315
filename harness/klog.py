"""Kernel log health: find the reports a kernel prints when something inside it went wrong.

A WARN in the nesting code is exactly what a nesting bug looks like, so every scenario
ends with a row judged here: no ``WARNING:``, ``BUG:``, Oops, KASAN / UBSAN / KFENCE
report, lockdep splat, ``refcount_t`` complaint, RCU stall, soft or hard lockup or hung
task in the guest's log since the scenario began.  The console watchdog uses the stall
kinds to tell a wedged guest from a slow one.  Pure Python (shipped into guests too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: (kind, pattern) in the order they are tried; a line matches at most one kind
SPLAT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("kasan", re.compile(r"BUG: KASAN: ")),
    ("kfence", re.compile(r"BUG: KFENCE: ")),
    ("ubsan", re.compile(r"UBSAN: ")),
    ("kmemleak", re.compile(r"kmemleak: \d+ new suspected memory leaks")),
    (
        "lockdep",
        re.compile(
            r"WARNING: (possible circular locking dependency|possible recursive locking|"
            r"inconsistent lock state|suspicious RCU usage|bad unlock balance|"
            r"held lock freed|lock held when returning to user space)"
        ),
    ),
    (
        "refcount",
        re.compile(r"refcount_t: (underflow|overflow|saturated|addition on 0|decrement hit 0)"),
    ),
    ("soft-lockup", re.compile(r"watchdog: BUG: soft lockup")),
    ("hard-lockup", re.compile(r"(watchdog: )?Watchdog detected hard LOCKUP")),
    (
        "rcu-stall",
        re.compile(
            r"rcu: INFO: rcu_\w+ (self-)?detected (expedited )?stalls?|"
            r"rcu_\w+ kthread timer wakeup didn't happen"
        ),
    ),
    ("hung-task", re.compile(r"INFO: task .+ blocked for more than \d+ seconds")),
    ("list-corruption", re.compile(r"list_(add|del) corruption")),
    ("oops", re.compile(r"(Internal error: Oops|Oops: [0-9a-fx]+|general protection fault)")),
    ("bug", re.compile(r"(kernel BUG at |BUG: (?!KASAN|KFENCE)\w)")),
    ("panic", re.compile(r"Kernel panic - not syncing")),
    (
        "warning",
        re.compile(
            r"WARNING: CPU: \d+ PID: \d+ at |WARNING: \S+:\d+ at \S+|"  # 7.x: file:line at fn
            r"------------\[ cut here \]------------"
        ),
    ),
)

#: kinds that mean "this guest stopped making progress", for hang detection
STALL_KINDS = frozenset({"rcu-stall", "soft-lockup", "hard-lockup", "hung-task"})

#: lines after a report's first line that belong to it (call trace, registers)
_TRACE_LINES = 40
_END = re.compile(r"---\[ end trace [0-9a-f]+ \]---")
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s?")


@dataclass(frozen=True)
class Splat:
    """One kernel report: its kind, its first line, and the lines that follow it."""

    kind: str
    first_line: str
    lines: tuple[str, ...] = field(default=())

    def text(self) -> str:
        return "\n".join((self.first_line, *self.lines))

    @property
    def title(self) -> str:
        """The first line without its timestamp, code offsets, CPU and task: what stays
        the same when the same report comes again (the fuzzer's reduction matches on it)."""
        text = _STAMP.sub("", self.first_line.strip())
        text = re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+", "", text)
        text = re.sub(r"CPU: \d+ PID: \d+ ", "", text)  # before 6.19: "CPU: 1 PID: 321 at"
        return re.sub(r",? CPU#\d+: .*$", "", text)  # 7.x: ", CPU#0: comm/pid"


def classify(line: str) -> str | None:
    """The splat kind whose first line ``line`` is, or None."""
    body = _STAMP.sub("", line)
    for kind, pattern in SPLAT_PATTERNS:
        if pattern.search(body):
            return kind
    return None


def find_splats(text: str) -> list[Splat]:
    """Every report in ``text`` (a dmesg or console log), each with its trace lines.

    A ``[ cut here ]`` marker and the ``WARNING:`` line after it are one report; the
    lines that follow a report's first line, up to the next report or an
    ``---[ end trace ]---`` line (at most 40), are kept as its trace.
    """
    lines = text.splitlines()
    splats: list[Splat] = []
    i = 0
    while i < len(lines):
        kind = classify(lines[i])
        if kind is None:
            i += 1
            continue
        first = lines[i].strip()
        j = i + 1
        if "[ cut here ]" in first and j < len(lines) and classify(lines[j]) is not None:
            kind, first = classify(lines[j]) or kind, lines[j].strip()
            j += 1
        trace: list[str] = []
        while j < len(lines) and len(trace) < _TRACE_LINES:
            if classify(lines[j]) is not None and "[ cut here ]" not in lines[j]:
                break
            trace.append(lines[j].rstrip())
            j += 1
            if _END.search(trace[-1]):
                break
        splats.append(Splat(kind, first, tuple(trace)))
        i = j
    return splats


def stalls(text: str) -> list[Splat]:
    """The reports in ``text`` that mean the kernel stopped making progress."""
    return [s for s in find_splats(text) if s.kind in STALL_KINDS]
