"""Unit-suite set-up: where the Linux 7.3 reference sources are.

Tests that cross-check models against the kernel's own code (register macros, fault
reason tables, log formats) read ``$VIOMMU_KSRC``; by default that is the copy of
``drivers/iommu`` kept with the cached uAPI headers (made from Debian's linux-source
package by ``harness.uapi.headers``).

Hypothesis runs without its per-example deadline: on a 2-core CI host busy with guests,
wall-clock time per example says nothing about the code under test.
"""

from __future__ import annotations

import os
import sys

from hypothesis import settings

from harness.errors import HarnessError
from harness.uapi.headers import ensure_uapi_tree

settings.register_profile("harness", deadline=None)
settings.load_profile("harness")

if "VIOMMU_KSRC" not in os.environ:
    try:
        os.environ["VIOMMU_KSRC"] = str(ensure_uapi_tree().source_dir)
    except HarnessError as exc:  # the tests that need it skip, naming the reason
        print(f"unit tests: no kernel reference sources: {exc}", file=sys.stderr)
