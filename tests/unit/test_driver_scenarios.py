"""Tier 1 scenario plumbing without a guest: errno-contract specs, verdicts from guest tables."""

from __future__ import annotations

import ctypes
import errno

import pytest

from harness.driver import PAGE_SIZE
from harness.scenarios import tier1
from harness.scenarios.base import load_all
from harness.scenarios.guest import errno_contract as ec
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t

pytestmark = pytest.mark.tier0


def _fixture() -> ec.Fixture:
    class Buf:
        addr = 0x7000_0000
        fd = 5

    return ec.Fixture(None, None, 1, 2, 3, 4, 5, 6, Buf(), Buf())  # type: ignore[arg-type]


def test_every_iommufd_ioctl_is_probed() -> None:
    names = {spec.name for spec in ec.specs(noiommu=True)}
    assert set(uapi.IOCTLS) | {"IOMMU_TEST_CMD"} == names


def test_minimum_sizes_match_the_kernels_ioctl_op_table() -> None:
    sizes = {spec.name: spec.min_size for spec in ec.specs(noiommu=True)}
    # offsetofend(struct, last) as in drivers/iommu/iommufd/main.c IOCTL_OP()
    assert sizes["IOMMU_DESTROY"] == 8
    assert sizes["IOMMU_IOAS_MAP"] == 40
    assert sizes["IOMMU_HWPT_ALLOC"] == 24
    assert sizes["IOMMU_GET_HW_INFO"] == 32
    assert sizes["IOMMU_VFIO_IOAS"] == 12
    assert sizes["IOMMU_TEST_CMD"] == ctypes.sizeof(t.iommu_test_cmd) - 4


@pytest.mark.parametrize("spec", ec.specs(noiommu=False), ids=lambda s: s.name)
def test_cases_only_touch_fields_of_their_struct(spec: ec.Spec) -> None:
    fixture = _fixture()
    assert spec.cases, "every ioctl needs at least one case"
    assert spec.cases[0].expected != 0, "the size probes reuse the first case: it must fail"
    for case in spec.cases:
        obj = spec.build(fixture, case.fields)
        assert int.from_bytes(bytes(obj)[:4], "little") == spec.size
        for name, value in case.fields.items():
            member = getattr(spec.struct, name)
            raw = bytes(obj)[member.offset : member.offset + min(member.size, 8)]
            want = value(fixture) if callable(value) else value
            assert int.from_bytes(raw, "little") == want & ((1 << (8 * len(raw))) - 1)


def test_build_applies_valid_arguments_under_the_case() -> None:
    spec = next(s for s in ec.specs(noiommu=True) if s.name == "IOMMU_IOAS_MAP")
    case = next(c for c in spec.cases if c.name == "unknown flag")
    obj = uapi.iommu_ioas_map.from_buffer_copy(bytes(spec.build(_fixture(), case.fields)))
    assert (obj.ioas_id, obj.user_va, obj.length) == (1, 0x7000_0000, PAGE_SIZE)
    assert obj.flags == ec.RW | 1 << 31


def test_noiommu_changes_only_the_get_pa_expectations() -> None:
    on = {(s.name, c.name): c.expected for s in ec.specs(True) for c in s.cases}
    off = {(s.name, c.name): c.expected for s in ec.specs(False) for c in s.cases}
    changed = {k for k in on if on[k] != off[k]}
    assert changed and all(name == "IOMMU_IOAS_NOIOMMU_GET_PA" for name, _ in changed)
    assert all(off[k] == errno.EOPNOTSUPP for k in changed)


def test_kernel_vs_seed_differences_carry_notes() -> None:
    for spec in ec.specs(noiommu=True):
        for case in spec.cases:
            rule = ec.SEED_RULE.get(case.kind)
            if rule is not None and case.expected != rule:
                assert case.note, f"{spec.name}: {case.name} differs from seed 001 without a note"


def test_judge_makes_one_check_per_row() -> None:
    result = {
        "title": "demo",
        "ok": False,
        "rows": [
            {"name": "a", "expected": 1, "got": 1, "ok": True},
            {"name": "b", "expected": "EINVAL", "got": "success", "ok": False, "note": "n"},
        ],
        "ioctls": ["X"],
    }
    verdict = tier1.judge("tier1-demo", result)
    assert [c.ok for c in verdict.checks] == [True, False]
    assert verdict.facts["ioctls"] == ["X"] and not verdict.passed
    assert "b: expected 'EINVAL', got 'success' (n)" in verdict.summary()
    text = tier1.table_text(result)
    assert text.splitlines()[0] == "demo" and "FAIL  b" in text


def test_judge_fails_an_empty_or_inconsistent_table() -> None:
    assert not tier1.judge("x", {"ok": True, "rows": []}).passed
    rows = [{"name": "a", "expected": 1, "got": 1, "ok": True}]
    assert not tier1.judge("x", {"ok": False, "rows": rows}).passed
    assert tier1.judge("x", {"ok": True, "rows": rows}).passed


def test_tier1_scenarios_are_registered_for_both_arches() -> None:
    registry = load_all()
    for name in tier1.CASES:
        assert registry[name].tier == 1
        assert registry[name].arches == ("x86_64", "arm64")
        assert registry[name].guest("arm64").viommu is None
