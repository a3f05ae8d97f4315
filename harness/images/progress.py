"""Progress of long build steps on stderr: live on a terminal, sparse lines in a log."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

_KBUILD_STEP = re.compile(r"^  [A-Z][A-Z0-9_+-]*\s+\S")


class Progress(Protocol):
    """What the builders report to: one long step at a time."""

    def begin(self, title: str) -> None:
        """A long step starts."""

    def update(self, fraction: float | None, detail: str = "") -> None:
        """How far the current step is (None: unknown) and what it is doing now."""

    def end(self, summary: str = "") -> None:
        """The current step finished."""

    def message(self, text: str) -> None:
        """A one-off line (cache hit, waiting for a lock, ...)."""

    def failed(self, text: str, log_tail: str) -> None:
        """The current step failed: the error line and the last lines of its log."""


class NullProgress:
    """Reports nothing (tests, callers that want silence)."""

    def begin(self, title: str) -> None:
        """Ignore."""

    def update(self, fraction: float | None, detail: str = "") -> None:
        """Ignore."""

    def end(self, summary: str = "") -> None:
        """Ignore."""

    def message(self, text: str) -> None:
        """Ignore."""

    def failed(self, text: str, log_tail: str) -> None:
        """Ignore."""


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: short and sortable by eye."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def describe_progress(fraction: float | None, elapsed: float, detail: str = "") -> str:
    """``47% 3m12s elapsed, ~3m35s left: CC fs/x.o`` (percent and estimate only when known)."""
    parts = []
    if fraction is not None:
        parts.append(f"{fraction * 100:3.0f}%")
    timing = f"{format_duration(elapsed)} elapsed"
    if fraction is not None and 0.02 <= fraction < 1.0:
        timing += f", ~{format_duration(elapsed * (1 - fraction) / fraction)} left"
    parts.append(timing)
    text = " ".join(parts)
    return f"{text}: {detail}" if detail else text


class StreamProgress:
    """Progress on a text stream: a redrawn line on a TTY, else a line per ~10% or 30 s."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        is_tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "images",
        line_every_fraction: float = 0.10,
        line_every_seconds: float = 30.0,
        redraw_seconds: float = 0.25,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self._tty = (bool(isatty()) if isatty else False) if is_tty is None else is_tty
        self._clock = clock
        self._prefix = prefix
        self._line_every_fraction = line_every_fraction
        self._line_every_seconds = line_every_seconds
        self._redraw_seconds = redraw_seconds
        self._title = ""
        self._started = 0.0
        self._last_time = 0.0
        self._last_fraction: float | None = None
        self._drawn = False

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def begin(self, title: str) -> None:
        """Print the step's title and start its clock."""
        self._clear()
        self._title = title
        self._started = self._last_time = self._clock()
        self._last_fraction = None
        self._write(f"[{self._prefix}] {title} ...\n")

    def update(self, fraction: float | None, detail: str = "") -> None:
        """Redraw (TTY, throttled) or print a line when 10% more is done or 30 s passed."""
        now = self._clock()
        elapsed = now - self._started
        if self._tty:
            if now - self._last_time < self._redraw_seconds and self._drawn:
                return
            columns = 100
            text = f"[{self._prefix}] {self._title}: {describe_progress(fraction, elapsed, detail)}"
            self._write("\r\x1b[K" + text[:columns])
            self._drawn = True
            self._last_time = now
            return
        due_by_time = now - self._last_time >= self._line_every_seconds
        due_by_fraction = fraction is not None and (
            fraction >= (self._last_fraction or 0.0) + self._line_every_fraction
        )
        if not (due_by_time or due_by_fraction):
            return
        self._write(f"[{self._prefix}] {self._title}: {describe_progress(fraction, elapsed)}\n")
        self._last_time = now
        if fraction is not None:
            self._last_fraction = fraction

    def end(self, summary: str = "") -> None:
        """Print how long the step took."""
        self._clear()
        took = format_duration(self._clock() - self._started)
        tail = f" ({summary})" if summary else ""
        self._write(f"[{self._prefix}] {self._title}: done in {took}{tail}\n")

    def message(self, text: str) -> None:
        """Print a one-off line."""
        self._clear()
        self._write(f"[{self._prefix}] {text}\n")

    def failed(self, text: str, log_tail: str) -> None:
        """Print the error and the log's last lines, indented."""
        self._clear()
        self._write(f"[{self._prefix}] FAILED: {text}\n")
        if log_tail:
            self._write(f"[{self._prefix}] last lines of the log:\n")
            for line in log_tail.splitlines():
                self._write(f"    {line}\n")


def is_kbuild_step(line: str) -> bool:
    """Whether a line of quiet kbuild output reports one build step (``  CC      x.o``)."""
    return _KBUILD_STEP.match(line) is not None


class StepEstimate:
    """Fraction done of a build that prints one line per step, against an expected total."""

    def __init__(self, expected_steps: int) -> None:
        self.expected_steps = max(1, expected_steps)
        self.steps = 0

    def feed(self, line: str) -> bool:
        """Count the line if it is a step; True when it was."""
        if is_kbuild_step(line):
            self.steps += 1
            return True
        return False

    @property
    def fraction(self) -> float:
        """Steps done over the expected total, held below 1 until the build really ends."""
        return min(self.steps / self.expected_steps, 0.99)
