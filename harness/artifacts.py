"""Where a run's artifacts go: one directory per machine, kept after teardown.

The root is ``--artifacts DIR`` where a command has it, else ``$VIOMMU_ARTIFACTS``, else
``${XDG_STATE_HOME:-~/.local/state}/viommu-harness/artifacts`` (private, 0700), so
nothing lands in the directory a command runs from (e.g. a kernel tree).  The
checkout's own test runs (``scripts/test``) set ``VIOMMU_ARTIFACTS`` to ``./artifacts``,
which CI uploads.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

ENV = "VIOMMU_ARTIFACTS"


def default_root() -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/viommu-harness/artifacts``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "viommu-harness" / "artifacts"


def artifacts_root() -> Path:
    """``$VIOMMU_ARTIFACTS`` (as given) or the private per-user default (made 0700)."""
    override = os.environ.get(ENV)
    if override:
        return Path(override).resolve()
    root = default_root()
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
    return root


def add_artifacts_option(parser: argparse.ArgumentParser) -> None:
    """``--artifacts DIR``: where a command writes this run's artifacts."""
    parser.add_argument(
        "--artifacts", type=Path, metavar="DIR",
        help=f"this run's artifacts directory (default: new, under ${ENV} or {default_root()})",
    )  # fmt: skip


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
