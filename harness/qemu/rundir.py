"""Private per-machine run directories and loopback port allocation."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path


def private_run_dir(prefix: str = "viommu-") -> Path:
    """A fresh 0700 directory for sockets and keys (short path: unix sockets max 107 bytes)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.access(base, os.W_OK):
        base = "/tmp"
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o700)
    return path


def remove_run_dir(path: Path) -> None:
    """Remove a run directory and everything in it; missing is fine."""
    shutil.rmtree(path, ignore_errors=True)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
