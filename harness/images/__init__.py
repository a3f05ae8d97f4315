"""Guest images: kernels built from Debian's linux-source-7.3 (or a user's kernel tree)
and Debian trixie initramfs.

``ensure(arch, flavor, kernel_tree=None, kernel_flavor="default")`` returns a
:class:`GuestImage` (building it on a cold cache); ``lookup`` only finds;
``tree.tree_state(path)`` says which state of a tree a kernel would be built from.
Importing this package has no side effects.
"""

from __future__ import annotations

from harness.images.arches import ARCHES, READY_MARKER
from harness.images.errors import (
    ImageBuildError,
    ImageNotBuiltError,
    KernelConfigError,
    PrerequisiteError,
)
from harness.images.pipeline import GuestImage, ensure, lookup
from harness.images.tree import KernelTreeError, TreeState, tree_state

__all__ = [
    "ARCHES",
    "READY_MARKER",
    "GuestImage",
    "ImageBuildError",
    "ImageNotBuiltError",
    "KernelConfigError",
    "KernelTreeError",
    "PrerequisiteError",
    "TreeState",
    "ensure",
    "lookup",
    "tree_state",
]
