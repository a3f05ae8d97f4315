"""The pure parts of the tier-2 VT-d scenarios: case generation, trace decoding, fault ring
replay, capability checks and the type1 / iommufd-compat comparison (seed 002)."""

from __future__ import annotations

from typing import Any

import pytest

from harness.qemu.trace import parse_trace_line
from harness.scenarios import vtd
from harness.scenarios.base import REGISTRY, load_all
from harness.vtd import Cap, Ecap, FaultRecord, predict_registers
from harness.vtd.predict import resolve_config

pytestmark = pytest.mark.tier0

MASK = vtd.DEFAULT_DMA_MASK


# --- registry ---------------------------------------------------------------------------


def test_scenarios_are_registered_for_x86_64_vtd() -> None:
    load_all()
    names = {n for n in REGISTRY if n.startswith("vtd-")}
    assert names >= {
        "vtd-capabilities", "vtd-dma-translation", "vtd-dma-faults", "vtd-nesting",
        "vtd-pasid", "vtd-cdev-edge-cases", "vtd-compat-differential",
    }  # fmt: skip
    for name in names:
        scenario = REGISTRY[name]
        assert scenario.tier == 2 and scenario.arches == ("x86_64",)
        assert scenario.guest("x86_64").viommu == "vtd"
    assert REGISTRY["vtd-pasid"].guest("x86_64").viommu_options == {"pasid_mode": True}


def test_option_matrix_is_valid_for_qemu() -> None:
    from harness.profiles import make_viommu

    for name, overrides in vtd.OPTION_MATRIX.items():
        viommu = make_viommu("vtd", overrides)
        assert viommu is not None
        cap, ecap = predict_registers(dict(viommu.properties()))
        assert isinstance(cap, Cap) and isinstance(ecap, Ecap), name
    assert {o.get("aw_bits", 48) for o in vtd.OPTION_MATRIX.values()} == {39, 48}
    assert any(o.get("caching_mode") is False for o in vtd.OPTION_MATRIX.values())
    assert any(o.get("pasid_mode") for o in vtd.OPTION_MATRIX.values())


# --- DMA cases --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 1234, 2**31 - 1])
def test_translation_cases_stay_inside_mask_and_buffers(seed: int) -> None:
    cases = vtd.translation_cases(seed, MASK)
    assert cases == vtd.translation_cases(seed, MASK)
    for case in cases:
        size = case["map_size"]
        for iova in (case["src_iova"], case["dst_iova"]):
            assert iova % (vtd.HUGE if case["backing"] != "4k" else vtd.PAGE) == 0
            assert iova + size - 1 <= MASK
        assert abs(case["src_iova"] - case["dst_iova"]) >= size
        assert case["offset"] >= 0 and case["offset"] + case["length"] <= size
    assert {c["backing"] for c in cases} == {"4k", "thp", "hugetlb"}
    assert any(c["src_iova"] == 0 for c in cases)
    assert any(c["dst_iova"] + c["map_size"] - 1 == MASK for c in cases)


def test_translation_cases_follow_a_wider_mask() -> None:
    wide = (1 << 32) - 1
    assert max(c["dst_iova"] + c["map_size"] - 1 for c in vtd.translation_cases(5, wide)) == wide


def test_bad_dmas_are_distinct_pages_inside_the_mask() -> None:
    bad = vtd.bad_dmas(7, 0x40000, MASK)
    assert [b["direction"] for b in bad] == ["write", "read", "write"]
    iovas = [b["iova"] for b in bad]
    assert len(set(iovas)) == 3 and all(i % vtd.PAGE == 0 and i <= MASK for i in iovas)
    assert 0x40000 not in iovas


# --- trace decoding and the fault ring ------------------------------------------------

FLTS_LINES = """\
1931@1795276910.435400:vtd_dmar_fault sid 0x8 fault 113 addr 0x63fb000 write 1
1931@1795276910.435425:vtd_frr_new index 0 high 0x7180000008 low 0x63fb000
"""
LEGACY_LINES = """\
1931@1795276910.435400:vtd_dmar_fault sid 0x8 fault 5 addr 0x63fb000 write 1
1931@1795276910.435425:vtd_frr_new index 0 high 0xffff0500000008 low 0x63fb000
1931@1795276910.435447:vtd_dmar_fault sid 0x8 fault 5 addr 0x63fb004 write 1
"""


def records(text: str) -> list[Any]:
    return [r for r in map(parse_trace_line, text.splitlines()) if r is not None]


def test_trace_faults_decode_qemu_messages() -> None:
    assert vtd.trace_faults(records(FLTS_LINES)) == [vtd.TraceFault(0x8, 0x71, 0x63FB000, True)]
    assert len(vtd.trace_faults(records(LEGACY_LINES))) == 2


def test_frcd_writes_decode_and_legacy_pv_is_kept_aside() -> None:
    (flts,) = vtd.trace_record_writes(records(FLTS_LINES))
    assert flts.record == FaultRecord(sid=8, address=0x63FB000, reason=0x71, pasid=0, fault=False)
    assert flts.raw_pv == 0
    (legacy,) = vtd.trace_record_writes(records(LEGACY_LINES))
    assert legacy.record.pasid is None and legacy.record.reason == 5 and legacy.record.is_write
    assert legacy.raw_pv == 0xFFFF


def _expected(address: int) -> Any:
    from harness.rings import ExpectedFault

    return ExpectedFault(sid=8, address=address, reason=0x71, is_write=True)


def test_fault_ring_one_record_per_dma_is_ok() -> None:
    per_dma = [
        (_expected(a), [FaultRecord.dma(8, a, 0x71, is_write=True)]) for a in (0x1000, 0x2000)
    ]
    verdicts = vtd.fault_ring(1, per_dma)
    assert [v.ok for v in verdicts] == [True, True]
    assert [v.records_seen for v in verdicts] == [1, 1]


def test_fault_ring_flags_a_second_record_and_a_missing_one() -> None:
    twice = [FaultRecord.dma(8, 0x1000, 0x71, is_write=True)] * 2
    (double,) = vtd.fault_ring(1, [(_expected(0x1000), twice)])
    assert not double.ok and double.overflow_signalled
    (missing,) = vtd.fault_ring(1, [(_expected(0x1000), [])])
    assert not missing.ok and missing.unmatched_expected
    (wrong,) = vtd.fault_ring(
        1, [(_expected(0x1000), [FaultRecord.dma(8, 0x1000, 5, is_write=True)])]
    )
    assert not wrong.ok and wrong.unexpected


def test_expected_reason_by_translation_stage() -> None:
    flts = resolve_config({"x-scalable-mode": True, "x-flts": True})
    slts = resolve_config({"x-scalable-mode": True})
    assert vtd.expected_reason(flts, True) == vtd.expected_reason(flts, False) == 0x71
    assert (vtd.expected_reason(slts, True), vtd.expected_reason(slts, False)) == (5, 6)


# --- capabilities -----------------------------------------------------------------------


def test_register_checks_name_the_field_that_differs() -> None:
    cap, ecap = predict_registers({"x-scalable-mode": True, "x-flts": True})
    assert all(c.ok for c in vtd.register_checks("ECAP", ecap, ecap))
    other = Ecap.decode(ecap.encode() | 1 << 26)
    bad = [c for c in vtd.register_checks("ECAP", ecap, other) if not c.ok]
    assert [(c.name, c.expected, c.got) for c in bad] == [("ECAP.NEST", 0, 1)]
    assert len(vtd.register_checks("CAP", cap, cap)) == len(cap.fields()) + 1


def test_nesting_blockers_follow_the_kernel_rule() -> None:
    cap, ecap = predict_registers({"x-scalable-mode": True, "x-flts": True})
    assert vtd.nesting_blockers(cap, ecap) == ["ECAP.NEST"]
    legacy_cap, legacy_ecap = predict_registers({})
    assert vtd.nesting_blockers(legacy_cap, legacy_ecap) == ["ECAP.SMTS", "ECAP.NEST"]
    nest = Ecap.decode(ecap.encode() | 1 << 26)
    assert vtd.nesting_blockers(cap, nest) == []


def test_config_checks_compare_every_resolved_field() -> None:
    a = resolve_config({"x-scalable-mode": True})
    b = resolve_config({"x-scalable-mode": True, "caching-mode": True})
    failed = [c.name for c in vtd.config_checks(a, b) if not c.ok]
    assert failed == ["resolved caching_mode"]


class FakeQmp:
    def __init__(self, tree: dict[str, list[dict[str, str]]]) -> None:
        self.tree = tree

    def execute(self, command: str, args: dict[str, Any] | None = None) -> Any:
        assert command == "qom-list" and args is not None
        return self.tree.get(args["path"], [])


def test_find_device_path_looks_in_peripheral_then_anon() -> None:
    qmp = FakeQmp({
        "/machine/peripheral": [{"name": "edu0", "type": "child<edu>"}],
        "/machine/peripheral-anon": [{"name": "device[0]", "type": "child<intel-iommu>"}],
    })  # fmt: skip
    assert vtd.find_device_path(qmp, "edu") == "/machine/peripheral/edu0"  # type: ignore[arg-type]
    assert vtd.find_device_path(qmp, "intel-iommu") == "/machine/peripheral-anon/device[0]"  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="no arm-smmuv3"):
        vtd.find_device_path(qmp, "arm-smmuv3")  # type: ignore[arg-type]


# --- type1 vs compat (seed 002) ---------------------------------------------------------


def op(name: str, value: Any = None, errno: str | None = None) -> dict[str, Any]:
    if errno:
        return {"op": name, "ok": False, "errno": errno}
    return {"op": name, "ok": True, "value": value}


def info(**overrides: Any) -> dict[str, Any]:
    base = {
        "argsz_needed": 88, "argsz": 88, "flags": 3, "iova_pgsizes": 0x40201000,
        "cap_ids": [3, 1], "cap_sizes": {"3": 16, "1": 48},
        "iova_ranges": [[0, 0xFEDFFFFF], [0xFEF00000, (1 << 47) - 1]],
        "dma_avail": 0xFFFFFFFF, "migration": False,
    }  # fmt: skip
    base.update(overrides)
    return base


TYPE1_INFO = info(
    argsz_needed=120,
    argsz=120,
    cap_ids=[2, 3, 1],
    cap_sizes={"2": 32, "3": 16, "1": 48},
    dma_avail=65532,
    migration=True,
)


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], iommu_type: int = 3) -> Any:
    return vtd.compare_sequences(a, b, iommu_type)


def test_identical_sequences_pass() -> None:
    ops = [op("VFIO_GET_API_VERSION", 0), op("MAP_DMA A"), op("UNMAP_DMA B", errno="EINVAL")]
    checks, found = compare(ops, ops)
    assert all(c.ok for c in checks) and not found and len(checks) == 3


def test_errno_differences_are_documented_outcome_differences_are_not() -> None:
    checks, found = compare(
        [op("SET_IOMMU 99", errno="ENODEV"), op("MAP_DMA overlapping", errno="EEXIST")],
        [op("SET_IOMMU 99", errno="EINVAL"), op("MAP_DMA overlapping")],
    )
    assert [c.ok for c in checks] == [True, False]
    assert found[0].documented_by == vtd.DOC_ERRNO
    assert "UNDOCUMENTED" in checks[1].note and found[1].aspect == "outcome"


def test_known_findings_pass_but_stay_reported() -> None:
    checks, found = compare([op("SET_IOMMU 3 again", errno="EINVAL")], [op("SET_IOMMU 3 again")])
    assert [c.ok for c in checks] == [True]
    assert "known finding" in checks[0].note
    assert not found[0].documented_by
    assert vtd.finding_key(found[0].op, found[0].aspect) in vtd.KNOWN_FINDINGS


def test_get_info_migration_and_dma_avail_are_documented() -> None:
    checks, found = compare([op("IOMMU_GET_INFO", TYPE1_INFO)], [op("IOMMU_GET_INFO", info())])
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    aspects = {d.aspect: d.documented_by for d in found}
    assert aspects["migration capability"] == vtd.DOC_DIRTY
    assert aspects["argsz"] == vtd.DOC_DIRTY
    assert aspects["dma_avail"] == vtd.DOC_LIMITS


def test_unpadded_last_capability_would_be_an_undocumented_difference() -> None:
    compat = info(argsz=84, argsz_needed=84, cap_sizes={"3": 16, "1": 44})
    checks, found = compare([op("IOMMU_GET_INFO", TYPE1_INFO)], [op("IOMMU_GET_INFO", compat)])
    undocumented = {d.aspect for d in found if not d.documented_by}
    assert undocumented == {"capability 1 size", "argsz", "argsz_needed"}
    assert not all(c.ok for c in checks)


def test_iova_range_difference_is_reported_once() -> None:
    compat = info(iova_ranges=[[0, (1 << 64) - 1]], cap_sizes={"3": 16, "1": 32}, argsz=72,
                  argsz_needed=72, iova_pgsizes=(1 << 64) - 4096)  # fmt: skip
    _, found = compare(
        [op("IOMMU_GET_INFO (set)", TYPE1_INFO)], [op("IOMMU_GET_INFO (set)", compat)]
    )
    undocumented = sorted(d.aspect for d in found if not d.documented_by)
    assert undocumented == ["iova_pgsizes", "iova_ranges"]


def test_type1_v1_split_is_documented_only_for_type1_v1() -> None:
    a = [op("UNMAP_DMA middle of A (pages 4..7)", 0)]
    b = [op("UNMAP_DMA middle of A (pages 4..7)", 16384)]
    _, v1 = compare(a, b, iommu_type=1)
    _, v2 = compare(a, b, iommu_type=3)
    assert v1[0].documented_by == vtd.DOC_SPLIT and v2[0].documented_by == ""


def test_update_vaddr_is_documented() -> None:
    name = "CHECK_EXTENSION VFIO_UPDATE_VADDR (set)"
    _, found = compare([op(name, 1)], [op(name, 0)])
    assert found[0].documented_by == vtd.DOC_VADDR


def test_different_operation_lists_fail_once() -> None:
    checks, found = compare([op("A"), op("B")], [op("A")])
    assert len(checks) == 1 and not checks[0].ok and not found
