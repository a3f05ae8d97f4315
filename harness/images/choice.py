"""Which guest kernel a command boots: the package's, a user's tree, or a given image file.

``--kernel-tree DIR`` / ``--kernel-flavor F`` choose what :func:`ensure` builds;
``--kernel PATH`` boots that image file as is (the initramfs still comes from the cache).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.images.pipeline import GuestImage, ensure
from harness.images.progress import Progress
from harness.images.recipe import Recipe
from harness.images.tree import check_tree


@dataclass(frozen=True)
class KernelChoice:
    """A command's kernel options: at most one of ``path`` and ``tree``, and a flavor."""

    path: Path | None = None
    tree: Path | None = None
    flavor: str = "default"

    def __post_init__(self) -> None:
        if self.path is not None and self.tree is not None:
            raise ConfigError("--kernel and --kernel-tree exclude each other")
        if self.path is not None and self.flavor != "default":
            raise ConfigError("--kernel-flavor builds a kernel; --kernel boots a given one")
        if self.path is not None and not self.path.is_file():
            raise ConfigError(f"--kernel {self.path}: no such file")
        if self.tree is not None:
            check_tree(self.tree)
        if self.flavor not in (known := Recipe().kernel_flavors()):
            raise ConfigError(f"unknown kernel flavor {self.flavor!r} (known: {', '.join(known)})")

    @property
    def is_default(self) -> bool:
        """Whether this is the package's default kernel (no option given)."""
        return self.path is None and self.tree is None and self.flavor == "default"

    def image(
        self, arch: str, flavor: str = "default", progress: Progress | None = None
    ) -> GuestImage:
        """The guest image with this kernel (built first when needed; ImageBuildError)."""
        image = ensure(arch, flavor, progress, kernel_tree=self.tree, kernel_flavor=self.flavor)
        if self.path is None:
            return image
        return replace(
            image,
            kernel=self.path.resolve(),
            kernel_release="",
            kernel_flavor="",
            kernel_identity=file_identity(self.path),
        )

    def to_json(self) -> dict[str, Any]:
        """The options as given (a repro bundle records them)."""
        return {
            "path": str(self.path) if self.path else None,
            "tree": str(self.tree) if self.tree else None,
            "flavor": self.flavor,
        }


def file_identity(path: Path) -> dict[str, Any]:
    """The identity of a kernel given as a file: its path and sha256 (release from the guest)."""
    return {
        "source": f"file {path.resolve()}",
        "file": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "commit": "",
        "dirty": "",
        "kernel_flavor": "",
        "release": "",
        "config_sha256": "",
    }
