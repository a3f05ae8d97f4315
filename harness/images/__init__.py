"""Guest images: kernels built from Debian's linux-source-7.3 and Debian trixie initramfs.

``ensure(arch, flavor)`` returns a :class:`GuestImage` (building it on a cold cache);
``lookup`` only finds. Importing this package has no side effects.
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

__all__ = [
    "ARCHES",
    "READY_MARKER",
    "GuestImage",
    "ImageBuildError",
    "ImageNotBuiltError",
    "KernelConfigError",
    "PrerequisiteError",
    "ensure",
    "lookup",
]
