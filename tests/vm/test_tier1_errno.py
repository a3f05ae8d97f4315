"""Tier 1: seed 001's errno contract, every iommufd ioctl x case, on x86_64 and arm64.

The table (ioctl x case -> expected / got / seed 001's rule / note) is printed and saved
in the test's artifacts; any row where the kernel's answer differs from the expected
one fails the test.  Expected values come from the guest kernel's source; rows where the
kernel differs from seed 001 are expected to pass and carry a note saying how.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.vm.test_tier1_mock import run_case, tier1_guest

pytestmark = pytest.mark.tier1

NOTED_DIFFERENCES = (
    "IOMMU_HWPT_ALLOC: pt_id does not exist",
    "IOMMU_HWPT_SET_DIRTY_TRACKING: __reserved non-zero",
)


def _check(result: dict[str, Any]) -> None:
    rows = result["rows"]
    names = {r["name"] for r in rows}
    assert len(result["ioctls"]) >= 23, f"only {result['ioctls']} probed"
    for case in ("size", "trailing byte", "NULL argument"):
        per_ioctl = {r["ioctl"] for r in rows if case in r["name"]}
        assert set(result["ioctls"]) <= per_ioctl, f"{case!r} missing for some ioctl"
    assert sum(r["expected"] == "ENOTTY" for r in rows) >= 5
    for name in NOTED_DIFFERENCES:
        assert name in names and next(r for r in rows if r["name"] == name).get("note")


@pytest.mark.x86_64
def test_errno_contract_x86_64(shared_guest: Any, artifacts_dir: Path) -> None:
    _, result = run_case(tier1_guest(shared_guest, "x86_64"), "tier1-errno-contract", artifacts_dir)
    _check(result)


@pytest.mark.arm64
def test_errno_contract_arm64(shared_guest: Any, artifacts_dir: Path) -> None:
    _, result = run_case(tier1_guest(shared_guest, "arm64"), "tier1-errno-contract", artifacts_dir)
    _check(result)
