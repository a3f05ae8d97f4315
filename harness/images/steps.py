"""Run build commands with their full output in a log file and a line hook for progress."""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from harness.images.errors import ImageBuildError, PrerequisiteError

TAIL_LINES = 25
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the harness dies, even by SIGKILL.

    Build commands run in their own session (so a whole tree can be killed at once);
    without this a killed harness would leave make running in the shared build tree.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file ('' when unreadable)."""
    try:
        with log.open(errors="replace") as stream:
            return "".join(deque(stream, maxlen=lines)).rstrip("\n")
    except OSError:
        return ""


def run_logged(
    step: str,
    argv: Sequence[str],
    log: TextIO,
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> None:
    """Run ``argv`` with stdout+stderr appended to ``log``; ImageBuildError on failure.

    The command runs in its own process group, killed as a whole if the caller is
    interrupted, so no compiler outlives an aborted build.
    """
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["LC_ALL"] = "C"
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=full_env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except FileNotFoundError:
        raise PrerequisiteError(
            f"{step}: {argv[0]} not found (scripts/setup.sh installs it)"
        ) from None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        status = process.wait()
    except BaseException:
        _kill_group(process)
        raise
    finally:
        log.flush()
    if status != 0:
        raise ImageBuildError(
            step, f"`{shlex.join(argv[:3])} ...` exited with status {status}", log_path
        )


def _kill_group(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output, or ``missing`` when it cannot run."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    if result.returncode != 0:
        return "missing"
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else "unknown"
