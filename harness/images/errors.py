"""Errors of the image pipeline: each says what failed and where to look."""

from __future__ import annotations

from pathlib import Path

from harness.errors import HarnessError, PrerequisiteError


class ImageBuildError(HarnessError):
    """A build step failed: names the step, the log file and keeps the log's last lines."""

    def __init__(self, step: str, problem: str, log: Path | None = None, tail: str = "") -> None:
        where = f"; log: {log}" if log is not None else ""
        super().__init__(f"{step}: {problem}{where}")
        self.step = step
        self.problem = problem
        self.log = log
        self.tail = tail


class KernelConfigError(ImageBuildError):
    """Requested kernel options did not end up as requested after ``olddefconfig``."""


class ImageNotBuiltError(HarnessError):
    """``images path`` (or a lookup) found no cached image for the current recipe."""


__all__ = [
    "ImageBuildError",
    "ImageNotBuiltError",
    "KernelConfigError",
    "PrerequisiteError",
]
