"""The nesting uAPI fuzzer in a guest: tier 1 (the IOMMUFD_TEST mock, both arches) and
tier 2 (edu's VFIO cdev on QEMU's SMMUv3, arm64).

- A short fixed-seed run per arch (CI: 60 s of fuzzing; 85 s with the boot on TCG with
  the debug kernel, both arches) finds nothing and reaches every object type with success
  and EBUSY on destroy; the nightly run fuzzes 10 minutes per arch.
- A planted bug (the guest executor sends a wrong invalidation flag only when a vEVENTQ
  fd is open and the target is a nested HWPT over a vIOMMU) is found, shrunk to a few
  steps (8 on x86_64, seed 7), and its repro bundle fails the same step the same way
  through ``harness repro`` (nightly: about 4 minutes with the search, the shrinking and
  the replay's boot).

- Tier 2: a short fixed-seed run (CI) finds nothing and reaches the VFIO attach, the
  vIOMMU objects, accepted and refused invalidations and GET_HW_INFO; a planted bug (the
  guest sends a vSTE with EATS 0b10 once the vIOMMU has a vDEVICE) is found, shrunk and
  replayed through ``harness repro`` (nightly).

Each test boots its own guest (the fuzzer's), so it is not shared with other tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.commands.fuzz import run_fuzz
from harness.replay import replay_scenario
from harness.repro import read_bundle
from harness.scenarios import tier1

pytestmark = pytest.mark.tier1

ARCHES = [pytest.param(a, marks=getattr(pytest.mark, a)) for a in tier1.ARCHES]
PLANT = "invalidate-nested-viommu-with-veventq"
PLANT_SMMUV3 = "nested-ste-eats-with-vdevice"
#: (ioctl, outcome) a short tier-2 run must reach
MUST_REACH_SMMUV3 = (
    ("VFIO_DEVICE_BIND_IOMMUFD", "ok"),
    ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "ok"),
    ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "EINVAL"),
    ("IOMMU_HWPT_ALLOC", "ok"),
    ("IOMMU_VIOMMU_ALLOC", "ok"),
    ("IOMMU_VDEVICE_ALLOC", "ok"),
    ("IOMMU_VEVENTQ_ALLOC", "ok"),
    ("IOMMU_HWPT_INVALIDATE", "ok"),
    ("IOMMU_HWPT_INVALIDATE", "EIO"),
    ("IOMMU_GET_HW_INFO", "ok"),
    ("IOMMU_DESTROY", "EBUSY"),
)
#: ioctls a 60 s run must have seen succeed (every object type of the nesting uAPI)
MUST_SUCCEED = (
    "IOMMU_IOAS_ALLOC",
    "IOMMU_IOAS_MAP",
    "IOMMU_HWPT_ALLOC",
    "IOMMU_VIOMMU_ALLOC",
    "IOMMU_VDEVICE_ALLOC",
    "IOMMU_VEVENTQ_ALLOC",
    "IOMMU_FAULT_QUEUE_ALLOC",
    "IOMMU_HWPT_INVALIDATE",
    "IOMMU_DESTROY",
    "IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE)",
)


def fuzz_or_skip(arch: str, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """``run_fuzz`` with a private database; skips when the guest kernel lacks the mock."""
    try:
        return run_fuzz(
            arch, database=tmp_path / "db", artifacts=tmp_path / "fuzz", log=print, **kw
        )
    except tier1.Tier1UnavailableError as exc:
        pytest.skip(str(exc))


def check_nothing_found(summary: dict[str, Any], min_steps: int) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "contract"}, indent=1))
    assert not summary["found"], summary["failure"] or summary["guest_lost"] or summary["error"]
    assert summary["steps"] >= min_steps, summary["steps"]


def check_clean_run(summary: dict[str, Any], min_steps: int) -> None:
    check_nothing_found(summary, min_steps)
    outcomes = {row["ioctl"]: row["outcomes"] for row in summary["ioctl_outcomes"]}
    missing = [i for i in MUST_SUCCEED if "ok" not in outcomes.get(i, {})]
    assert not missing, f"never succeeded: {missing}"
    assert "EBUSY" in outcomes["IOMMU_DESTROY"]


@pytest.mark.parametrize("arch", ARCHES)
def test_fuzz_short_budget(arch: str, tmp_path: Path) -> None:
    """CI: 60 s of fuzzing with a fixed seed finds nothing and reaches every object type."""
    check_clean_run(fuzz_or_skip(arch, tmp_path, budget=60, seed=20261206), min_steps=1000)


@pytest.mark.slow
@pytest.mark.nightly
@pytest.mark.parametrize("arch", ARCHES)
def test_fuzz_nightly(arch: str, tmp_path: Path) -> None:
    """Nightly: 10 minutes per arch."""
    check_clean_run(fuzz_or_skip(arch, tmp_path, budget=600, seed=20261207), min_steps=10000)


@pytest.mark.slow
@pytest.mark.nightly
@pytest.mark.x86_64
def test_planted_bug_is_found_shrunk_and_replayed(tmp_path: Path) -> None:
    """The planted wrong flag is found, shrunk to a few steps, and fails again in a replay."""
    summary = fuzz_or_skip("x86_64", tmp_path, budget=180, seed=7, plant=PLANT, steps=40)
    assert summary["found"], "the planted bug was not found"
    report = json.loads((tmp_path / "fuzz" / "fuzz-failure.json").read_text())
    failing = report["failing"]
    print(json.dumps(failing, indent=1), f"\n{report['steps']} steps")
    assert failing["expected"]["outcome"] == "ok"
    assert failing["got"]["outcome"] == "EOPNOTSUPP"
    assert report["trace"][report["failing_step"]]["step"]["op"] == "invalidate"
    assert report["steps"] <= 8, [s["step"] for s in report["trace"]]
    script = (tmp_path / "fuzz" / "fuzz-repro.py").read_text()
    compile(script, "fuzz-repro.py", "exec")
    assert PLANT in script

    verdict = replay_scenario(
        read_bundle(tmp_path / "fuzz"), artifacts=tmp_path / "replay", write=print
    )
    print(verdict.table())
    assert [c.name for c in verdict.failures] == [failing["label"]]
    failed = verdict.failures[0]
    assert (failed.expected["outcome"], failed.got["outcome"]) == ("ok", "EOPNOTSUPP")


def check_clean_tier2_run(summary: dict[str, Any], min_steps: int) -> None:
    check_nothing_found(summary, min_steps)
    reached = {(row["ioctl"], o) for row in summary["ioctl_outcomes"] for o in row["outcomes"]}
    missing = [pair for pair in MUST_REACH_SMMUV3 if pair not in reached]
    assert not missing, f"never reached: {missing}"
    assert set(summary["smmu_id_regs"]) == {*(f"IDR{i}" for i in range(6)), "IIDR", "AIDR"}
    assert summary["ste_reads"] > 0  # the STE was read back, and agreed, after attaches


@pytest.mark.arm64
def test_fuzz_tier2_short_budget(tmp_path: Path) -> None:
    """CI: 60 s of tier 2 with a fixed seed finds nothing, and the model's facts are QEMU's
    SMMU ID registers read over QMP."""
    summary = fuzz_or_skip("arm64", tmp_path, tier=2, budget=60, seed=20261206)
    check_clean_tier2_run(summary, min_steps=1000)


@pytest.mark.slow
@pytest.mark.nightly
@pytest.mark.arm64
def test_fuzz_tier2_nightly(tmp_path: Path) -> None:
    """Nightly: 10 minutes of tier 2."""
    summary = fuzz_or_skip("arm64", tmp_path, tier=2, budget=600, seed=20261207)
    check_clean_tier2_run(summary, min_steps=10000)


@pytest.mark.slow
@pytest.mark.nightly
@pytest.mark.arm64
def test_tier2_planted_bug_is_found_shrunk_and_replayed(tmp_path: Path) -> None:
    """Tier 2's planted vSTE (EATS 0b10 once the vIOMMU has a vDEVICE) is found, shrunk to
    a few steps, and fails the same step again through the fuzz-replay-smmuv3 bundle."""
    summary = fuzz_or_skip("arm64", tmp_path, tier=2, budget=240, seed=7, plant=PLANT_SMMUV3)
    assert summary["found"], "the planted bug was not found"
    report = json.loads((tmp_path / "fuzz" / "fuzz-failure.json").read_text())
    failing = report["failing"]
    print(json.dumps(failing, indent=1), f"\n{report['steps']} steps")
    assert (failing["expected"]["outcome"], failing["got"]["outcome"]) == ("ok", "EIO")
    ops = [s["step"]["op"] for s in report["trace"]]
    assert ops[-1] == "hwpt_alloc" and "vdevice_alloc" in ops, ops
    assert report["steps"] <= 8, ops
    script = (tmp_path / "fuzz" / "fuzz-repro.py").read_text()
    compile(script, "fuzz-repro.py", "exec")
    assert "SmmuSession" in script and PLANT_SMMUV3 in script

    verdict = replay_scenario(
        read_bundle(tmp_path / "fuzz"), artifacts=tmp_path / "replay", write=print
    )
    print(verdict.table())
    assert [c.name for c in verdict.failures] == [failing["label"]]
