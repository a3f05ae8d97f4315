"""QEMU trace events: switched on and off over QMP, read back from QEMU's log file.

QEMU's ``log`` trace backend writes trace lines to the ``-D`` file: QEMU 10 as
``PID@SEC.USEC:name message``, QEMU 11 (with ``-msg timestamp=on``) as
``2026-01-01T00:00:13.337974Z name  message``; both are parsed.  ``TraceWindow`` marks
the file's end when a scenario step starts, so a reader sees only that step's records.
"""

from __future__ import annotations

import datetime
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.qemu.qmp import QmpSession

_LINE = re.compile(r"^(?:(?P<pid>\d+)@(?P<ts>\d+\.\d+):)?(?P<name>[a-z0-9_]+) ?(?P<msg>.*)$")
_ISO_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z (?P<name>[a-z0-9_]+)(?: +(?P<msg>.*))?$"
)
_FIELD = re.compile(r"([A-Za-z_][\w-]*)\s*[=:]\s*(0x[0-9a-fA-F]+|-?\d+|[^\s,()]+)")


@dataclass(frozen=True)
class TraceRecord:
    """One trace event: its name, QEMU's timestamp, the message and the fields found in it."""

    name: str
    timestamp: float | None
    message: str
    fields: dict[str, str] = field(default_factory=dict)

    def int_field(self, key: str) -> int | None:
        """A field as an integer (hex or decimal), or None when absent or not a number."""
        value = self.fields.get(key)
        if value is None:
            return None
        try:
            return int(value, 0)
        except ValueError:
            return None


def parse_trace_line(line: str) -> TraceRecord | None:
    """Parse one log line; non-trace lines (plain log messages) give None."""
    text = line.rstrip("\n")
    m = _LINE.match(text)
    if m is not None and m.group("pid") is not None:
        timestamp = float(m.group("ts"))
    else:
        m = _ISO_LINE.match(text)
        if m is None or (m.group("msg") or "").startswith(":"):
            return None  # QEMU 11's plain messages: "<time> qemu-system-...: text"
        when = datetime.datetime.fromisoformat(m.group("ts")).replace(tzinfo=datetime.UTC)
        timestamp = when.timestamp()
    msg = m.group("msg") or ""
    return TraceRecord(
        name=m.group("name"), timestamp=timestamp, message=msg, fields=dict(_FIELD.findall(msg))
    )


def set_trace_events(qmp: QmpSession, patterns: Iterable[str], enable: bool = True) -> int:
    """Switch trace events matching each pattern; returns how many events match."""
    count = 0
    for pattern in patterns:
        qmp.execute("trace-event-set-state", {"name": pattern, "enable": enable})
        count += len(qmp.execute("trace-event-get-state", {"name": pattern}))
    return count


class TraceWindow:
    """Records written to the QEMU log after ``start`` (construction time)."""

    def __init__(self, log: Path, start: int | None = None) -> None:
        self.log = log
        if start is None:
            start = log.stat().st_size if log.exists() else 0
        self.start = start

    def records(self, pattern: str = "*") -> list[TraceRecord]:
        """Parsed trace records since the window opened whose name matches ``pattern``."""
        if not self.log.exists():
            return []
        with open(self.log, "rb") as f:
            f.seek(self.start)
            data = f.read().decode("utf-8", "replace")
        out = []
        for line in data.splitlines():
            rec = parse_trace_line(line)
            if rec is not None and fnmatch.fnmatchcase(rec.name, pattern):
                out.append(rec)
        return out
