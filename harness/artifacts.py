"""Where a run's artifacts go: one directory per machine, kept after teardown."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path


def artifacts_root() -> Path:
    """``$VIOMMU_ARTIFACTS`` or ./artifacts (the CI uploads this directory)."""
    return Path(os.environ.get("VIOMMU_ARTIFACTS") or "artifacts").resolve()


def new_artifacts_dir(label: str, root: Path | None = None) -> Path:
    """A fresh, uniquely named directory ``<root>/<label>-<time>-<pid>[-n]``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")[:80] or "run"
    base = root or artifacts_root()
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / f"{safe}-{stamp}-{os.getpid()}{f'-{n}' if n else ''}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create an artifacts directory under {base}")
