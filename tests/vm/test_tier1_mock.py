"""Tier 1 on the IOMMUFD_TEST mock: nested HWPT, vIOMMU, fault queue, vEVENTQ (x86_64, arm64).

One guest per arch (no vIOMMU, no device) is shared by every tier 1 test: each guest
half opens its own iommufd and leaves nothing behind.  Each test prints the guest's
check table and fails naming the rows that did not hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.agent.client import AgentRemoteError
from harness.scenarios import tier1
from harness.scenarios.base import Verdict, load_all

pytestmark = pytest.mark.tier1


def tier1_guest(shared_guest: Any, arch: str) -> Any:
    """The session's tier 1 guest for ``arch`` (no vIOMMU, no device); skips without the mock."""
    load_all()  # host halves may add packages to the agent bundle; load them before booting
    guest = shared_guest(arch, None, devices=(), name=f"tier1-{arch}")
    try:
        tier1.preflight(guest)
    except tier1.Tier1UnavailableError as exc:
        pytest.skip(str(exc))
    return guest


def run_case(guest: Any, name: str, artifacts: Path) -> tuple[Verdict, dict[str, Any]]:
    """Run tier 1 case ``name``, print its table, fail naming the rows that did not hold."""
    verdict, result = tier1.run_on(guest, name, artifacts=artifacts)
    print(tier1.table_text(result))
    print(f"{name}: {verdict.timings['guest_call_s']:.1f}s in the guest call")
    assert verdict.passed, verdict.summary()
    return verdict, result


MOCK_CASES = (
    "tier1-nested-hwpt",
    "tier1-dirty-tracking",
    "tier1-viommu",
    "tier1-fault-queue",
    "tier1-veventq",
)


@pytest.mark.x86_64
@pytest.mark.parametrize("name", MOCK_CASES)
def test_mock_x86_64(name: str, shared_guest: Any, artifacts_dir: Path) -> None:
    run_case(tier1_guest(shared_guest, "x86_64"), name, artifacts_dir)


@pytest.mark.arm64
@pytest.mark.parametrize("name", ("tier1-mock-smoke", *MOCK_CASES))
def test_mock_arm64(name: str, shared_guest: Any, artifacts_dir: Path) -> None:
    run_case(tier1_guest(shared_guest, "arm64"), name, artifacts_dir)


@pytest.mark.x86_64
def test_mock_smoke_x86_64(shared_guest: Any, artifacts_dir: Path) -> None:
    run_case(tier1_guest(shared_guest, "x86_64"), "tier1-mock-smoke", artifacts_dir)


@pytest.mark.x86_64
def test_driver_regression_names_the_ioctl(shared_guest: Any) -> None:
    """A wrong structure size in the driver fails the scenario with IOMMU_IOAS_MAP named."""
    guest = tier1_guest(shared_guest, "x86_64")
    with pytest.raises(AgentRemoteError) as info:
        guest.call("mock.broken_struct_size", delta=-8)
    err = info.value
    assert err.ioctl == "IOMMU_IOAS_MAP"
    assert err.payload.get("errno_name") == "EINVAL"
    assert "IOMMU_IOAS_MAP: EINVAL" in str(err) and "size=32" in err.payload.get("args_repr", "")
    verdict, _ = tier1.run_on(guest, "tier1-mock-smoke")
    assert verdict.passed, f"the driver was not restored: {verdict.summary()}"
