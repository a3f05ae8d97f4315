"""Mutation tests of the hot-plug scenarios' reset rows: map the IOVA that worked before the
``system_reset`` again afterwards, and the rows that say it must fault have to fail.

(The scenarios themselves run in CI as registered scenarios: ``tests/vm/test_scenarios.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pytest_plugin import kvm_skip_reason, qemu_for
from harness.scenarios.hotplug import IOVA, VTD_IOVA

pytestmark = pytest.mark.tier2


@pytest.mark.parametrize(
    ("name", "arch", "old_iova", "rows"),
    [
        pytest.param(
            "smmuv3-hotplug", "arm64", IOVA,
            ("after the reset: a DMA to the old IOVA does not land",
             "after the reset: the old IOVA faults (F_TRANSLATION, vSID, address)"),
            marks=[pytest.mark.smmuv3, pytest.mark.arm64],
        ),
        pytest.param(
            "vtd-hotplug", "x86_64", VTD_IOVA,
            ("after the reset: a DMA to the old IOVA does not land",
             "after the reset: the old IOVA is a DMAR fault in dmesg (sid, addr, write)"),
            marks=[pytest.mark.vtd, pytest.mark.x86_64],
        ),
    ],
)  # fmt: skip
def test_the_old_iova_mapped_again_fails_the_stale_rows(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int, name: str, arch: str,
    old_iova: int, rows: tuple[str, ...],
) -> None:  # fmt: skip
    from harness.scenarios.runner import run_scenario

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason(arch, accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], arch)
    verdict = run_scenario(name, arch, params={"reset_iova": old_iova}, qemu=qemu, accel=accel,
                           seed=seed, artifacts=artifacts_dir)  # fmt: skip
    print(verdict.table())
    failed = {c.name for c in verdict.failures}
    assert not verdict.passed, "mapping the old IOVA again left the verdict passing"
    assert set(rows) <= failed, f"expected {rows} to fail; failed: {sorted(failed)}"
    # everything before the reset still passed: the mutation is what failed the verdict
    assert not [n for n in failed if not n.startswith("after the reset")], sorted(failed)
