"""Tier 3: QEMU's own nesting (arm-smmuv3,accel=on / intel-iommu,fsts=on over iommufd).

Simulated here as L2 inside L1 (arm64 TCG at EL2 with a nesting emulated SMMUv3, QEMU
11.1.3 as L2's VMM under KVM); on a KVM host with nesting hardware, ``--host-device BDF``
runs the passthrough scenario for real.  Without one, the passthrough tests skip naming
what is missing (no --host-device, no nesting-capable host IOMMU, ...).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from harness.host import host_arch
from harness.scenarios.tier3 import KVM_REFUSAL, VTD_REFUSAL
from harness.tier3 import hostcheck
from harness.tier3.passthrough import HOST_DEVICE_ENV

pytestmark = [pytest.mark.tier3, pytest.mark.slow]


def _run(run_registered: Any, record_property: Any, name: str, arch: str) -> Any:
    started = time.monotonic()
    verdict = run_registered(name, arch)
    record_property("wall_s", f"{time.monotonic() - started:.1f}")
    for key, value in verdict.timings.items():
        record_property(key, f"{value:.1f}")
    assert verdict.passed, f"{verdict.summary()}\n{verdict.table()}"
    return verdict


@pytest.mark.arm64
@pytest.mark.smmuv3
def test_l2_in_l1_accelerated_smmuv3(run_registered: Any, record_property: Any) -> None:
    verdict = _run(run_registered, record_property, "tier3-l2-smmuv3", "arm64")
    assert verdict.facts["l2_qemu"].startswith("QEMU emulator version 11.")
    assert KVM_REFUSAL in verdict.facts["tcg_refusal"]
    assert verdict.facts["l1_iort_canwbs"] is True
    assert verdict.facts["l2_iort_override"]["rmr_nodes"]
    commands = verdict.facts["guest_invalidation_commands"]
    assert any(c.startswith("TLBI_NH_") for c in commands), commands
    assert verdict.timings["l2_boot_s"] > 0


@pytest.mark.x86_64
@pytest.mark.vtd
def test_l2_in_l1_vtd_first_stage_is_refused(run_registered: Any, record_property: Any) -> None:
    verdict = _run(run_registered, record_property, "tier3-l2-vtd", "x86_64")
    refused = verdict.facts["outcomes"]["fsts=on aw-bits=48"]
    assert VTD_REFUSAL in refused["stderr"]
    assert "NEST=0" in verdict.facts["host_iommu"]["reason"]


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_passthrough_on_a_nesting_host(
    request: pytest.FixtureRequest,
    host_device: str,
    run_registered: Any,
    record_property: Any,
    monkeypatch: pytest.MonkeyPatch,
    arch: str,
) -> None:
    if arch != host_arch():
        pytest.skip(f"{arch} passthrough needs an {arch} KVM host (this one is {host_arch()})")
    report = hostcheck.check_host(host_device)
    if report.skip_reason is not None:
        pytest.skip(report.skip_reason)
    monkeypatch.setenv(HOST_DEVICE_ENV, host_device)
    verdict = _run(run_registered, record_property, "tier3-passthrough", arch)
    assert verdict.facts["host"]["iommu"]["nesting"] is True
