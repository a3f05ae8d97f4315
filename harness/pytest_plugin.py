"""pytest plugin: the harness's command-line options, markers and shared fixtures."""

from __future__ import annotations

import pytest

MARKERS = {
    "tier0": "pure Python, no guest",
    "tier1": "boots a guest; kernel's iommufd selftest mock",
    "tier2": "boots a guest; emulated VT-d / SMMUv3 with real DMA",
    "tier3": "QEMU's own nesting: passthrough or L2 inside L1",
    "vtd": "Intel VT-d",
    "smmuv3": "Arm SMMUv3",
    "x86_64": "x86_64 guest",
    "arm64": "arm64 guest",
    "slow": "takes more than a minute",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
