"""Tier 1: seed 002's VFIO type1 compat ioctls answered by /dev/iommu (x86_64, arm64).

The compat IOAS has a mock device attached, so MAP_DMA / UNMAP_DMA / UNMAP_ALL are
checked through the mock domain; the real type1 container (/dev/vfio/vfio) is compared
where it needs no group.  A type1 run with a group needs edu on vfio-pci: tier 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.scenarios.base import EFFECT, SETUP
from tests.vm.test_tier1_mock import run_case, tier1_guest

pytestmark = pytest.mark.tier1


def _check(result: dict[str, Any]) -> None:
    names = [r["name"] for r in result["rows"]]
    for prefix in ("v1: ", "v2: "):
        assert any(n.startswith(prefix + "MAP_DMA") for n in names)
        assert any(n.startswith(prefix + "UNMAP_ALL") for n in names)
        assert any(n.startswith(prefix + "GET_INFO") for n in names)
    assert any(n.startswith("type1 vs compat") for n in names)
    kinds = {r["name"]: r.get("kind", SETUP) for r in result["rows"]}
    setup = {n for n, kind in kinds.items() if kind == SETUP}
    assert setup <= {"type1: /dev/vfio/vfio present", "v1: SET_IOMMU", "v2: SET_IOMMU"}, setup
    assert set(kinds.values()) <= {EFFECT, SETUP}


@pytest.mark.x86_64
def test_vfio_compat_x86_64(shared_guest: Any, artifacts_dir: Path) -> None:
    _, result = run_case(tier1_guest(shared_guest, "x86_64"), "tier1-vfio-compat", artifacts_dir)
    _check(result)


@pytest.mark.arm64
def test_vfio_compat_arm64(shared_guest: Any, artifacts_dir: Path) -> None:
    _, result = run_case(tier1_guest(shared_guest, "arm64"), "tier1-vfio-compat", artifacts_dir)
    _check(result)
