"""The real Linux uAPI headers the ABI check compiles against, built once and cached.

``make headers_install`` runs on the few parts of Debian's ``linux-source-7.3`` tarball
it needs (top Makefile, ``scripts/``, ``include/uapi/``, ``arch/<arch>/``); the result
is renamed atomically into ``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/uapi-headers/<key>/``
next to a copy of the selftest header ``drivers/iommu/iommufd/iommufd_test.h``.  The key
names the installed package version (or the tarball's size and mtime) and the arch, so
a new tarball gives a new entry and a complete entry is never rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from harness.cachedir import cache_dir
from harness.errors import HarnessError

DEFAULT_TARBALL = Path("/usr/src/linux-source-7.3.tar.xz")
#: kernel sources kept beside the headers: drivers and selftests that unit tests read
#: to cross-check the models (register macros, reason tables, log formats)
REFERENCE_SOURCES = ("drivers/iommu", "tools/testing/selftests/iommu")
SELFTEST_HEADER = "drivers/iommu/iommufd/iommufd_test.h"
REQUIRED_TOOLS = ("tar", "xz", "make", "gcc", "rsync")
_RECIPE = "r2"
_MACHINE_TO_ARCH = {
    "x86_64": "x86",
    "amd64": "x86",
    "aarch64": "arm64",
    "arm64": "arm64",
    "riscv64": "riscv",
    "ppc64le": "powerpc",
    "s390x": "s390",
    "loongarch64": "loongarch",
}
_INSTALL_HINT = (
    "scripts/setup.sh installs it (apt: linux-source-7.3 from trixie-backports, "
    "build-essential, rsync, xz-utils)"
)


class UapiHeadersError(HarnessError):
    """The uAPI headers cannot be produced: a missing tarball or tool, or a failed step."""


@dataclass(frozen=True)
class UapiHeaders:
    """One cache entry: installed uAPI headers plus the selftest header."""

    root: Path

    @property
    def include_dir(self) -> Path:
        """``-I`` directory holding ``linux/``, ``asm/``, ``asm-generic/`` ..."""
        return self.root / "include"

    @property
    def selftest_dir(self) -> Path:
        """``-I`` directory holding ``iommufd_test.h``."""
        return self.root / "selftest"

    @property
    def iommufd_test_h(self) -> Path:
        return self.selftest_dir / "iommufd_test.h"

    @property
    def include_dirs(self) -> tuple[Path, Path]:
        """The ``-I`` directories a program including any of these headers needs."""
        return (self.include_dir, self.selftest_dir)

    @property
    def source_dir(self) -> Path:
        """Kernel sources the unit tests cross-check against (``REFERENCE_SOURCES``)."""
        return self.root / "source"

    def is_complete(self) -> bool:
        return (
            (self.include_dir / "linux" / "iommufd.h").is_file()
            and self.iommufd_test_h.is_file()
            and (self.source_dir / "drivers" / "iommu").is_dir()
        )


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/viommu-harness/uapi-headers``."""
    return cache_dir("uapi-headers")


def kernel_arch(machine: str | None = None) -> str:
    """The kernel's ``ARCH=`` name for a ``uname -m`` machine (the host's by default)."""
    machine = machine or platform.machine()
    try:
        return _MACHINE_TO_ARCH[machine]
    except KeyError:
        raise UapiHeadersError(f"no kernel ARCH known for machine {machine!r}") from None


def _package_version(tarball: Path) -> str | None:
    """``package_version`` of the Debian package that installed ``tarball``, if any."""
    if shutil.which("dpkg-query") is None:
        return None
    owner = subprocess.run(
        ["dpkg-query", "-S", str(tarball)], capture_output=True, text=True, check=False
    )
    if owner.returncode != 0 or ":" not in owner.stdout:
        return None
    package = owner.stdout.split(":", 1)[0].strip()
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    if version.returncode != 0 or not version.stdout.strip():
        return None
    return f"{package}_{version.stdout.strip()}"


def cache_key(tarball: Path, arch: str) -> str:
    """Cache entry name: package version (or tarball size + mtime), arch, recipe revision."""
    origin = _package_version(tarball)
    if origin is None:
        st = tarball.stat()
        origin = f"{tarball.name}_{st.st_size}_{st.st_mtime_ns}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{origin}_{arch}_{_RECIPE}")


def _log(stream: TextIO | None, message: str) -> None:
    if stream is not None:
        print(f"uapi-headers: {message}", file=stream, flush=True)


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["LC_ALL"] = "C"
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise UapiHeadersError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")


def _top_directory(tarball: Path) -> str:
    """Name of the tarball's top-level directory (read from its first member only)."""
    try:
        with tarfile.open(tarball, "r:*") as archive:
            first = archive.next()
    except (tarfile.TarError, OSError) as exc:
        raise UapiHeadersError(f"cannot read {tarball}: {exc}") from exc
    if first is None:
        raise UapiHeadersError(f"{tarball} is an empty archive")
    return first.name.lstrip("./").split("/", 1)[0]


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so parallel test workers build an entry only once."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_prerequisites(tarball: Path) -> None:
    if not tarball.is_file():
        raise UapiHeadersError(f"Linux source tarball {tarball} not found; {_INSTALL_HINT}")
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise UapiHeadersError(
            f"missing tool(s) {', '.join(missing)} needed for headers_install; {_INSTALL_HINT}"
        )


def _build(tarball: Path, arch: str, work: Path, entry: Path, log: TextIO | None) -> None:
    """Extract what headers_install needs from ``tarball`` and install into ``entry``."""
    top = _top_directory(tarball)
    src = work / "src"
    src.mkdir()
    members = ["Makefile", "scripts", "include/uapi", f"arch/{arch}", *REFERENCE_SOURCES]
    _log(log, f"extracting {', '.join(members)} from {tarball} (about 20-40 s)")
    _run(
        ["tar", "-xf", str(tarball), "-C", str(src), "--strip-components=1"]
        + [f"{top}/{member}" for member in members],
        "extracting the kernel source",
    )
    _log(log, f"make headers_install ARCH={arch}")
    _run(
        [
            "make",
            "-s",
            "-C",
            str(src),
            f"ARCH={arch}",
            f"INSTALL_HDR_PATH={entry}",
            "headers_install",
        ],
        "make headers_install",
    )
    (entry / "selftest").mkdir()
    shutil.copy2(src / SELFTEST_HEADER, entry / "selftest" / "iommufd_test.h")
    for member in REFERENCE_SOURCES:
        shutil.copytree(src / member, entry / "source" / member)
    provenance = {"tarball": str(tarball), "arch": arch, "built": time.strftime("%FT%T%z")}
    (entry / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")


def ensure_uapi_tree(
    tarball: Path | None = None,
    *,
    cache: Path | None = None,
    arch: str | None = None,
    log: TextIO | None = sys.stderr,
) -> UapiHeaders:
    """Return the cached uAPI header tree, building it first if it is not there."""
    tarball = tarball or DEFAULT_TARBALL
    arch = arch or kernel_arch()
    cache = cache or cache_root()
    if not tarball.is_file():
        _check_prerequisites(tarball)
    headers = UapiHeaders(cache / cache_key(tarball, arch))
    if headers.is_complete():
        return headers
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{headers.root.name}.lock"):
        if headers.is_complete():
            return headers
        _check_prerequisites(tarball)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
        try:
            entry = work / "entry"
            _build(tarball, arch, work, entry, log)
            if headers.root.exists():
                shutil.rmtree(headers.root)
            os.rename(entry, headers.root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    _log(log, f"ready in {headers.root} ({time.monotonic() - started:.0f} s)")
    return headers


def ensure_uapi_headers(
    tarball: Path | None = None, *, cache: Path | None = None, log: TextIO | None = sys.stderr
) -> Path:
    """Directory of the host arch's installed Linux 7.3 uAPI headers (``-I`` this)."""
    return ensure_uapi_tree(tarball, cache=cache, log=log).include_dir


def iommufd_test_header(
    tarball: Path | None = None, *, cache: Path | None = None, log: TextIO | None = sys.stderr
) -> Path:
    """Path of the cached copy of ``drivers/iommu/iommufd/iommufd_test.h``."""
    return ensure_uapi_tree(tarball, cache=cache, log=log).iommufd_test_h
