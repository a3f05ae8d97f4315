"""Guest-side system helpers: commands, files, the kernel log with marks, debugfs."""

from __future__ import annotations

import errno
import os
import platform
import re
import subprocess
import time
import uuid
from typing import Any

from guests.agent.server import method

DEBUGFS = "/sys/kernel/debug"


@method
def run(argv: list[str] | str, timeout: float = 60.0, input: bytes | None = None) -> dict[str, Any]:
    """Run a command (a list, or a string for ``sh -c``); never raises on a non-zero status."""
    cmd = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return {
            "status": None,
            "timeout": True,
            "stdout": exc.stdout or b"",
            "stderr": exc.stderr or b"",
        }
    return {"status": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


@method
def read_file(path: str, max_bytes: int = 16 * 1024 * 1024) -> bytes:
    with open(path, "rb") as f:
        return f.read(max_bytes)


@method
def write_file(path: str, data: bytes, mode: int = 0o644) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


@method
def info() -> dict[str, Any]:
    """Kernel and Python identity of the guest."""
    return {
        "kernel": platform.release(),
        "version": platform.version(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "uptime": float(open("/proc/uptime").read().split()[0]),
    }


#: /dev/kmsg escapes non-printable bytes (a tab becomes ``\x09``)
_KMSG_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def _kmsg_records() -> list[str]:
    """All records currently in the kernel log buffer (/dev/kmsg, non-blocking)."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    lines: list[str] = []
    try:
        while True:
            try:
                rec = os.read(fd, 8192)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    break
                if exc.errno == errno.EPIPE:  # overwritten while reading: skip ahead
                    continue
                raise
            if not rec:
                break
            header, _, text = rec.decode("utf-8", "replace").partition(";")
            fields = header.split(",")
            stamp = int(fields[2]) / 1e6 if len(fields) > 2 and fields[2].isdigit() else 0.0
            message = _KMSG_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text.split("\n", 1)[0])
            lines.append(f"[{stamp:12.6f}] {message}")
    finally:
        os.close(fd)
    return lines


@method
def dmesg_mark() -> str:
    """Write a unique marker into the kernel log; ``dmesg(since=marker)`` reads after it."""
    marker = f"viommu-harness-mark-{uuid.uuid4().hex[:12]}"
    with open("/dev/kmsg", "w") as f:
        f.write(marker + "\n")
    return marker


@method
def dmesg(since: str | None = None) -> str:
    lines = _kmsg_records()
    if since is not None:
        for i, line in enumerate(lines):
            if line.endswith(since):
                lines = lines[i + 1 :]
                break
        else:
            raise LookupError(f"dmesg mark {since!r} is no longer in the kernel log")
    return "\n".join(lines) + ("\n" if lines else "")


@method
def debugfs_read(path: str) -> str:
    """Read a debugfs file (e.g. ``iommu/intel/invalidation_queue``)."""
    full = os.path.normpath(os.path.join(DEBUGFS, path))
    if not full.startswith(DEBUGFS + "/"):
        raise ValueError(f"debugfs path {path!r} escapes {DEBUGFS}")
    with open(full, "rb") as f:
        return f.read().decode("utf-8", "replace")


@method
def kernel_config() -> dict[str, str]:
    """The running kernel's configuration (/proc/config.gz) as ``{CONFIG_X: value}``."""
    import gzip

    out: dict[str, str] = {}
    with gzip.open("/proc/config.gz", "rt") as f:
        for line in f:
            if line.startswith("CONFIG_"):
                key, _, value = line.strip().partition("=")
                out[key] = value
    return out


@method
def sleep(seconds: float) -> float:
    """Sleep in the guest (tests of hangs and timeouts)."""
    time.sleep(seconds)
    return seconds
