"""A user's QEMU source tree, built out of tree into the harness cache for one guest arch.

One build directory per (tree, arch) under ``cache_dir("qemu-trees")``: configured once
with ``configure --target-list=<arch>-softmmu`` (run from the build directory, so nothing
is written into the tree), then rebuilt incrementally with ninja; ninja re-runs meson when
the tree's build files change, and the harness re-runs ``configure`` when the script
itself changed.  A failed step raises ``ImageBuildError`` naming it and its log.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.cachedir import cache_dir
from harness.errors import ConfigError
from harness.images.steps import run_logged

#: harness arch -> (QEMU target, system emulator's name)
TARGETS: dict[str, tuple[str, str]] = {
    "x86_64": ("x86_64-softmmu", "qemu-system-x86_64"),
    "arm64": ("aarch64-softmmu", "qemu-system-aarch64"),
}
#: what configure leaves behind once it succeeded
CONFIGURED = "build.ninja"
#: sha256 of the tree's configure script the build directory was configured with
STAMP = ".viommu-configure"
#: configure options besides the target list: docs need sphinx and change no binary
CONFIGURE_OPTIONS = ("--disable-docs",)


@dataclass(frozen=True)
class QemuBuild:
    """A built system emulator: its path, seconds spent and whether configure ran."""

    binary: Path
    seconds: float
    configured: bool


def _target(arch: str) -> tuple[str, str]:
    try:
        return TARGETS[arch]
    except KeyError:
        raise ConfigError(f"arch {arch!r}: QEMU trees build {', '.join(TARGETS)}") from None


def build_dir(tree: Path, arch: str, root: Path | None = None) -> Path:
    """The cached build directory of ``tree`` for ``arch`` (one per tree and arch)."""
    real = os.path.realpath(tree)
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(real).name)[:40] or "qemu"
    return (root or cache_dir("qemu-trees")) / f"{name}-{digest}" / _target(arch)[0]


def configure_command(tree: Path, arch: str) -> list[str]:
    """The configure command line, run with the build directory as working directory."""
    return [str(tree / "configure"), f"--target-list={_target(arch)[0]}", *CONFIGURE_OPTIONS]


def build_command(build: Path, arch: str, jobs: int) -> list[str]:
    """The incremental build of the one system emulator the arch needs."""
    return ["ninja", "-C", str(build), f"-j{jobs}", _target(arch)[1]]


def binary_path(build: Path, arch: str) -> Path:
    """Where the build directory's system emulator lands."""
    return build / _target(arch)[1]


def _configure_digest(tree: Path) -> str:
    return hashlib.sha256((tree / "configure").read_bytes()).hexdigest()


def needs_configure(tree: Path, build: Path) -> bool:
    """True when ``build`` was never configured, its configure failed, or the script changed."""
    stamp = build / STAMP
    if not (build / CONFIGURED).is_file() or not stamp.is_file():
        return True
    return stamp.read_text().strip() != _configure_digest(tree)


def build_qemu(
    tree: Path,
    arch: str,
    log_path: Path,
    *,
    jobs: int | None = None,
    root: Path | None = None,
) -> QemuBuild:
    """Configure (when needed) and build ``tree``'s emulator for ``arch``; logged to ``log_path``.

    Raises ``ConfigError`` when ``tree`` has no ``configure`` script, ``ImageBuildError``
    when configure or ninja fails, ``PrerequisiteError`` when ninja is missing.  Builders
    of the same directory wait for each other (a lock file beside it).
    """
    if not (tree / "configure").is_file():
        raise ConfigError(f"{tree}: no configure script (not a QEMU source tree)")
    build = build_dir(tree, arch, root)
    build.mkdir(parents=True, exist_ok=True)
    jobs = jobs or os.cpu_count() or 1
    started = time.monotonic()
    with open(build.parent / f"{build.name}.lock", "w") as lock, log_path.open("a") as log:
        fcntl.flock(lock, fcntl.LOCK_EX)
        configured = needs_configure(tree, build)
        if configured:
            (build / STAMP).unlink(missing_ok=True)
            run_logged("qemu configure", configure_command(tree, arch), log, log_path, cwd=build)
            (build / STAMP).write_text(_configure_digest(tree) + "\n")
        run_logged("qemu build", build_command(build, arch, jobs), log, log_path)
    binary = binary_path(build, arch)
    if not binary.is_file():
        raise ConfigError(f"{tree}: the build made no {binary.name} (is it a QEMU tree?)")
    return QemuBuild(binary, time.monotonic() - started, configured)
