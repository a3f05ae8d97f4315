"""Where the image recipes live (config fragments, package lists, init) and their cache keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.images.arches import ARCHES, ArchSpec
from harness.images.cache import content_key
from harness.images.kconfig import merge_requests

_PACKAGE_DIR = Path(__file__).resolve().parent

KERNEL_CODE = ("kernel.py", "kconfig.py")
"""Recipe code whose contents are part of the kernel key."""
ROOTFS_CODE = ("rootfs.py", "cpio.py")
"""Recipe code whose contents are part of the root filesystem key."""

DEBIAN_SUITE = "trixie"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Recipe:
    """The recipe files of a checkout: ``images/``, ``guests/init/`` and this package's code."""

    root: Path = field(default_factory=lambda: _PACKAGE_DIR.parents[1])
    code_dir: Path = _PACKAGE_DIR

    @property
    def kernel_dir(self) -> Path:
        """Kernel config fragments: ``common.config`` plus ``<arch>.config``."""
        return self.root / "images" / "kernel"

    @property
    def rootfs_dir(self) -> Path:
        """Package lists: ``base.list`` plus ``<flavor>.list``."""
        return self.root / "images" / "rootfs"

    @property
    def init_dir(self) -> Path:
        """Files installed into every root filesystem (``init``, ``sshd_config``)."""
        return self.root / "guests" / "init"

    def kernel_flavors(self) -> list[str]:
        """Kernel flavors: ``default`` plus one per ``images/kernel/<flavor>.config``."""
        fixed = {"common", *ARCHES}
        extra = sorted(p.stem for p in self.kernel_dir.glob("*.config") if p.stem not in fixed)
        return ["default", *extra]

    def fragments(self, spec: ArchSpec, kernel_flavor: str = "default") -> list[tuple[str, str]]:
        """``(file name, text)`` of the fragments for an arch and kernel flavor, in merge order."""
        names = ["common.config", f"{spec.name}.config"]
        if kernel_flavor != "default":
            if kernel_flavor not in self.kernel_flavors():
                known = ", ".join(self.kernel_flavors())
                raise ConfigError(f"unknown kernel flavor {kernel_flavor!r} (known: {known})")
            names.append(f"{kernel_flavor}.config")
        fragments = []
        for name in names:
            path = self.kernel_dir / name
            try:
                fragments.append((name, path.read_text()))
            except OSError as exc:
                raise ConfigError(f"kernel config fragment {path}: {exc.strerror}") from None
        return fragments

    def flavors(self) -> list[str]:
        """Root filesystem flavors: one per ``images/rootfs/<flavor>.list`` except ``base``."""
        return sorted(p.stem for p in self.rootfs_dir.glob("*.list") if p.stem != "base")

    def packages(self, flavor: str) -> list[str]:
        """Debian packages of a flavor's root filesystem (base list first), without duplicates."""
        flavor_list = self.rootfs_dir / f"{flavor}.list"
        if flavor == "base" or not flavor_list.is_file():
            known = ", ".join(self.flavors()) or "none"
            raise ConfigError(f"unknown image flavor {flavor!r} (known: {known})")
        packages: list[str] = []
        for path in (self.rootfs_dir / "base.list", flavor_list):
            for package in parse_package_list(path.read_text(), path.name):
                if package not in packages:
                    packages.append(package)
        return packages

    def init_files(self) -> dict[str, bytes]:
        """Contents of every file under ``guests/init`` by relative name."""
        return {
            str(p.relative_to(self.init_dir)): p.read_bytes()
            for p in sorted(self.init_dir.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }

    def code_digest(self, names: tuple[str, ...]) -> dict[str, str]:
        """sha256 of each named recipe code file."""
        return {name: _digest((self.code_dir / name).read_bytes()) for name in names}

    def kernel_inputs(
        self,
        spec: ArchSpec,
        source: str | dict[str, str],
        toolchain: str,
        kernel_flavor: str = "default",
    ) -> dict[str, Any]:
        """Everything that determines a kernel build (hashed into its key).

        ``source`` is the package version, or a tree's ``TreeState.key_fields()``.
        """
        requests = merge_requests(self.fragments(spec, kernel_flavor))
        return {
            "kind": "kernel",
            **spec.kernel_fields(),
            "kernel_flavor": kernel_flavor,
            "source": source,
            "toolchain": toolchain,
            "options": {name: request.value for name, request in requests.items()},
            "code": self.code_digest(KERNEL_CODE),
        }

    def rootfs_inputs(self, spec: ArchSpec, flavor: str) -> dict[str, Any]:
        """Everything that determines a root filesystem build (hashed into its key)."""
        return {
            "kind": "rootfs",
            "arch": spec.name,
            "debian_arch": spec.debian_arch,
            "flavor": flavor,
            "suite": DEBIAN_SUITE,
            "mirror": DEBIAN_MIRROR,
            "packages": sorted(self.packages(flavor)),
            "init": {name: _digest(data) for name, data in self.init_files().items()},
            "code": self.code_digest(ROOTFS_CODE),
        }


def parse_package_list(text: str, name: str) -> list[str]:
    """Package names of a list file: one per line, ``#`` starts a comment."""
    packages = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if " " in line or "\t" in line:
            raise ConfigError(f"{name}:{number}: one package per line, got {line!r}")
        packages.append(line)
    return packages


def extra_suites(packages: list[str]) -> list[str]:
    """Debian suites besides ``DEBIAN_SUITE`` that ``package/suite`` entries name, in order."""
    suites: list[str] = []
    for package in packages:
        _, sep, suite = package.partition("/")
        if sep and suite != DEBIAN_SUITE and suite not in suites:
            suites.append(suite)
    return suites


def short_key(inputs: dict[str, Any]) -> str:
    """The 16-hex-digit key of a build's inputs, used in artifact directory names."""
    return content_key(inputs)[:16]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
