"""The content-addressed image cache: locked, atomically published artifact directories.

Layout under ``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/images`` (or
``$VIOMMU_IMAGE_CACHE``)::

    <kind>/<name>/        a finished artifact (kernel, rootfs, src); exists only once complete
    tmp/<kind>-<name>.*   staging directories of builds in progress (or killed ones)
    locks/<lock>.lock     fcntl locks; the holder's pid is written inside
    logs/<kind>-<name>.log  the log of the latest build attempt (kept on failure)
    stats/<name>.json     figures remembered between builds (expected kernel steps)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.cachedir import cache_dir
from harness.images.progress import NullProgress, Progress

META = "meta.json"


def default_root() -> Path:
    """The cache directory: ``$VIOMMU_IMAGE_CACHE`` or the XDG cache's ``viommu-harness/images``."""
    return cache_dir("images", "VIOMMU_IMAGE_CACHE")


def content_key(data: Any) -> str:
    """The sha256 (hex) of a JSON-serialisable description, independent of dict order."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """Artifact directories keyed by content, built once under a lock, published by rename."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_root()

    def artifact(self, kind: str, name: str) -> Path:
        """Where a finished artifact lives (whether or not it exists yet)."""
        return self.root / kind / name

    def lookup(self, kind: str, name: str) -> Path | None:
        """The finished artifact, or None: a directory there is complete by construction."""
        path = self.artifact(kind, name)
        return path if (path / META).is_file() else None

    def log_path(self, kind: str, name: str) -> Path:
        """The log file of the latest build attempt of an artifact."""
        return self.root / "logs" / f"{kind}-{name}.log"

    @contextlib.contextmanager
    def lock(self, name: str, progress: Progress | None = None) -> Iterator[None]:
        """Hold ``locks/<name>.lock`` exclusively; waits (saying for whom) if another holds it."""
        path = self.root / "locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                (progress or NullProgress()).message(
                    f"waiting for {name} (held by pid {holder}; lock {path})"
                )
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def build(
        self,
        kind: str,
        name: str,
        builder: Callable[[Path, Path], dict[str, Any]],
        progress: Progress | None = None,
        *,
        sync_files: bool = True,
        remove_stale: Callable[[Path], None] | None = None,
    ) -> Path:
        """Return the artifact, building it first if absent.

        ``builder(staging_dir, log_path)`` fills a fresh staging directory and returns
        metadata; the directory is renamed into place only after it returned, so an
        interrupted build leaves nothing that :meth:`lookup` accepts. Concurrent callers
        for the same artifact wait for the first one and then reuse its result.
        ``sync_files=False`` (large trees) flushes with one ``sync()`` instead of an fsync per file.
        Staging directories killed builds left (of this artifact, or of this kind by a
        process that is gone) are deleted first, by ``remove_stale`` when given (a builder
        whose leftovers need more than ``rmtree``).
        """
        found = self.lookup(kind, name)
        if found is not None:
            return found
        with self.lock(f"{kind}-{name}", progress):
            found = self.lookup(kind, name)
            if found is not None:
                return found
            staging_root = self.root / "tmp"
            staging_root.mkdir(parents=True, exist_ok=True)
            for stale in _stale_staging(staging_root, kind, name):
                if remove_stale is not None:
                    remove_stale(stale)
                else:
                    shutil.rmtree(stale, ignore_errors=True)
            staging = staging_root / f"{kind}-{name}.{os.getpid()}"
            staging.mkdir()
            log = self.log_path(kind, name)
            log.parent.mkdir(parents=True, exist_ok=True)
            try:
                meta = builder(staging, log)
                if log.exists():
                    shutil.copy2(log, staging / "build.log")
                (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
                if sync_files:
                    _sync_tree(staging)
                else:
                    os.sync()
                final = self.artifact(kind, name)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
                _fsync_dir(final.parent)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return final

    def read_stats(self, name: str) -> dict[str, Any]:
        """Figures remembered from earlier builds (empty when none)."""
        try:
            data = json.loads((self.root / "stats" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_stats(self, name: str, data: dict[str, Any]) -> None:
        """Remember figures for later builds (written atomically)."""
        path = self.root / "stats" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)

    def entries(self, kind: str) -> list[Path]:
        """Finished artifacts of one kind."""
        directory = self.root / kind
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if (p / META).is_file())


def read_meta(artifact: Path) -> dict[str, Any]:
    """The metadata a builder recorded for a finished artifact."""
    data = json.loads((artifact / META).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{artifact / META}: not a JSON object")
    return data


def _stale_staging(staging_root: Path, kind: str, name: str) -> list[Path]:
    """Staging directories of ``kind`` no build is using: this artifact's (its lock is
    held) and other artifacts' whose builder process (the name's ``.<pid>``) is gone."""
    stale = []
    for path in sorted(staging_root.glob(f"{kind}-*.*")):
        artifact, _, pid = path.name.rpartition(".")
        if artifact == f"{kind}-{name}" or not (pid.isdigit() and _alive(int(pid))):
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sync_tree(root: Path) -> None:
    for directory, _dirs, files in os.walk(root):
        for file_name in files:
            path = os.path.join(directory, file_name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
