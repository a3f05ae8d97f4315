"""The identity of this harness's code: what controller and hosts must share.

``code_digest()`` hashes the ``harness`` and ``guests`` packages' Python sources (names
and contents), so a checkout and a wheel built from it give the same digest, and any
edit gives another.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import harness

PACKAGES = ("harness", "guests")


@functools.cache
def code_digest(root: Path | None = None) -> str:
    """sha256 (hex) over every ``*.py`` of the ``harness`` and ``guests`` packages under
    ``root`` (default: the ones this process runs)."""
    root = root or Path(harness.__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in PACKAGES:
        base = root / package
        for path in sorted(base.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def identity(root: Path | None = None) -> dict[str, str]:
    """Versions that must match across the fleet: harness (+ code digest), distributed, Python."""
    import platform
    from importlib.metadata import version

    return {
        "harness": f"{harness.__version__}+{code_digest(root)[:12]}",
        "distributed": version("distributed"),
        "python": ".".join(platform.python_version_tuple()[:2]),
    }


def mismatch(controller: dict[str, str], host: dict[str, str]) -> str | None:
    """One line naming what differs between controller and host, or None."""
    diffs = [
        f"{k} {host.get(k, '?')} (controller {v})"
        for k, v in controller.items()
        if host.get(k) != v
    ]
    if not diffs:
        return None
    return "version mismatch: host has " + ", ".join(diffs) + " (run harness fleet deploy)"
