"""Where the harness caches what it builds or learns, per machine, outside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(name: str, override_env: str | None = None) -> Path:
    """``$override_env`` when set, else ``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/<name>``."""
    if override_env and (override := os.environ.get(override_env)):
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "viommu-harness" / name
