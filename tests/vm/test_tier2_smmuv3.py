"""Tier 2, SMMUv3: QEMU's emulated SMMUv3 with real iommufd nesting in an arm64 guest (TCG).

The stock boot comes first: it shows the vIOMMU refused (EOPNOTSUPP) with the reason, and
caches QEMU's IORT, from which the others' IORT override (CANWBS) is made.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.pytest_plugin import kvm_skip_reason, qemu_for

pytestmark = [pytest.mark.tier2, pytest.mark.smmuv3, pytest.mark.arm64]


def run(
    request: pytest.FixtureRequest,
    artifacts: Path,
    seed: int,
    name: str,
    *,
    override: bool,
    viommu_options: Mapping[str, Any] | None = None,
) -> Any:
    """Prepare (with or without the IORT override), boot, run and return the verdict."""
    from harness.errors import PrerequisiteError
    from harness.qemu.probe import MissingCapabilityError
    from harness.scenarios.base import get
    from harness.scenarios.runner import execute, resolve_params
    from harness.scenarios.smmuv3 import prepare_smmuv3

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("arm64", accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], "arm64")
    try:
        prepared = prepare_smmuv3(
            name, qemu=qemu, accel=accel, viommu_options=viommu_options, override=override
        )
    except (MissingCapabilityError, PrerequisiteError) as exc:
        pytest.skip(str(exc))
    scenario = get(name)
    directory = artifacts / name
    verdict = execute(scenario, prepared, resolve_params(scenario, None, seed), directory)
    print(verdict.table())
    print(json.dumps({"timings": verdict.timings, "facts": verdict.facts}, default=str)[:4000])
    assert verdict.passed, f"{verdict.summary()}\nartifacts: {directory}"
    return verdict


def test_stock_iort_refuses_viommu_with_reason(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int
) -> None:
    verdict = run(request, artifacts_dir, seed, "smmuv3-capabilities", override=False)
    capability = verdict.facts["capability"]
    assert capability["viommu"] is False
    assert "IDR3.FWB=0 and IORT CANWBS=0" in capability["explanation"]
    assert verdict.facts["iort"]["rc_memory_flags"] == ["0x03"]


@pytest.mark.parametrize("stage", ["1", "2"])
def test_single_stage_capabilities(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int, stage: str
) -> None:
    verdict = run(
        request,
        artifacts_dir,
        seed,
        "smmuv3-capabilities",
        override=False,
        viommu_options={"stage": stage},
    )
    assert verdict.facts["capability"]["nest_parent"] is False


def test_iort_override_allows_viommu(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int
) -> None:
    verdict = run(request, artifacts_dir, seed, "smmuv3-capabilities", override=True)
    assert verdict.facts["capability"]["viommu"] is True
    assert verdict.facts["iort"]["canwbs"] is True
    print(
        f"tainted={verdict.facts['tainted']}"
        f" TAINT_OVERRIDDEN_ACPI_TABLE={verdict.facts['taint_overridden_acpi_table']}"
    )


def test_cd_table_binding(request: pytest.FixtureRequest, artifacts_dir: Path, seed: int) -> None:
    run(request, artifacts_dir, seed, "smmuv3-cd-binding", override=True)


def test_invalidation_by_effect(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int
) -> None:
    run(request, artifacts_dir, seed, "smmuv3-invalidation", override=True)


def test_fault_rings(request: pytest.FixtureRequest, artifacts_dir: Path, seed: int) -> None:
    run(request, artifacts_dir, seed, "smmuv3-fault-rings", override=True)
