"""The pure parts of the tier-2 VT-d scenarios: case generation, trace decoding, fault ring
replay, capability checks and the type1 / iommufd-compat comparison (seed 002)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from harness.qemu.trace import parse_trace_line
from harness.scenarios import vtd
from harness.scenarios.base import EFFECT, REGISTRY, SETUP, load_all
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

U64 = (1 << 64) - 1
EXT_NAMES = (
    "VFIO_TYPE1_IOMMU", "VFIO_SPAPR_TCE_IOMMU", "VFIO_TYPE1v2_IOMMU", "VFIO_DMA_CC_IOMMU",
    "VFIO_TYPE1_NESTING_IOMMU(6)", "VFIO_NOIOMMU_IOMMU", "VFIO_UNMAP_ALL", "VFIO_UPDATE_VADDR",
)  # fmt: skip


def op(name: str, value: Any = None, errno: str | None = None) -> dict[str, Any]:
    if errno:
        return {"op": name, "ok": False, "errno": errno}
    return {"op": name, "ok": True, "value": value}


def answer(name: str, spec: Any) -> dict[str, Any]:
    """An op from a short answer: an E... string is an errno, anything else the value."""
    if isinstance(spec, str) and spec.startswith("E"):
        return op(name, errno=spec)
    return op(name, spec)


def info(**overrides: Any) -> dict[str, Any]:
    """Compat's GET_INFO once the device is attached (DMA_AVAIL, IOVA_RANGE with 2 ranges)."""
    base = {
        "argsz_needed": 88, "argsz": 88, "flags": 3, "iova_pgsizes": 0x40201000,
        "cap_ids": [3, 1], "cap_sizes": {"3": 16, "1": 48},
        "iova_ranges": [[0, 0xFEDFFFFF], [0xFEF00000, (1 << 47) - 1]],
        "dma_avail": 0xFFFFFFFF, "migration": False,
    }  # fmt: skip
    base.update(overrides)
    return base


def type1_info(dma_avail: int = 65535) -> dict[str, Any]:
    """type1's GET_INFO: compat's plus the 32-byte migration capability, its own dma_avail."""
    caps = {"2": 32, "3": 16, "1": 48}
    return info(argsz_needed=120, argsz=120, cap_ids=[2, 3, 1], cap_sizes=caps,
                dma_avail=dma_avail, migration=True)  # fmt: skip


#: compat's GET_INFO right after SET_IOMMU: no domain, no reserved region yet
COMPAT_INFO_EMPTY = info(argsz=72, argsz_needed=72, iova_pgsizes=U64 & ~0xFFF,
                         iova_ranges=[[0, U64]], cap_sizes={"3": 16, "1": 32})  # fmt: skip


def linux_7_3(iommu_type: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The container sequence's answers on Linux 7.3 under QEMU VT-d: (type1, compat).

    Built from the 7.3 source as analysed in ``vtd.DOCUMENTED`` / ``vtd.FINDINGS``, and
    equal op for op to the sequences ``vtd-compat-differential`` captured on 7.3.4 under
    QEMU 10 (default intel-iommu options, TCG); the VM test checks the real kernel.
    """
    v1 = iommu_type == 1
    page = vtd.SEQ_PAGE
    rows: list[tuple[str, Any, Any]] = [("VFIO_GET_API_VERSION", 0, 0)]
    no_group = {"VFIO_TYPE1_IOMMU": 1, "VFIO_TYPE1v2_IOMMU": 1, "VFIO_UNMAP_ALL": 1}
    for name in EXT_NAMES:
        compat = {"VFIO_DMA_CC_IOMMU": "ENODEV", "VFIO_NOIOMMU_IOMMU": 1}.get(name)
        want = no_group.get(name, 0)
        rows.append(
            (f"CHECK_EXTENSION {name} (no group)", want, want if compat is None else compat)
        )
    rows += [
        ("IOMMU_GET_INFO (no group)", "EINVAL", "ENODEV"),
        ("GROUP_GET_STATUS (before)", 1, 1),
        ("SET_IOMMU before SET_CONTAINER", "EINVAL", "ENODEV"),
        ("GROUP_SET_CONTAINER", None, None),
        ("GROUP_GET_STATUS (after)", 3, 3),
        ("SET_IOMMU bogus type 99", "ENODEV", "EINVAL"),
        (f"SET_IOMMU {iommu_type}", None, None),
        (f"SET_IOMMU {iommu_type} again", "EINVAL", None),
    ]
    for name in EXT_NAMES:
        t1, cp = no_group.get(name, 0), no_group.get(name, 0)
        t1, cp = {"VFIO_DMA_CC_IOMMU": (0, 1), "VFIO_NOIOMMU_IOMMU": (0, 1),
                  "VFIO_UPDATE_VADDR": (1, 0)}.get(name, (t1, cp))  # fmt: skip
        rows.append((f"CHECK_EXTENSION {name} (set)", t1, cp))
    rows += [
        ("IOMMU_GET_INFO (set)", type1_info(), COMPAT_INFO_EMPTY),
        ("CHECK_EXTENSION VFIO_DMA_CC_IOMMU (device open)", 0, 0),
        ("MAP_DMA A", None, None),
        ("MAP_DMA B", None, None),
        ("MAP_DMA sink", None, None),
        ("MAP_DMA overlapping A", "EEXIST", "EEXIST"),
        ("MAP_DMA unaligned size", "EINVAL", "EINVAL"),
        ("MAP_DMA flags 0x80", "EINVAL", "EINVAL"),
        ("DMA A[0] -> sink (mapped)", {"arrived": True}, {"arrived": True}),
        ("DMA A[5] -> sink (mapped)", {"arrived": True}, {"arrived": True}),
        ("IOMMU_GET_INFO (3 mappings)", type1_info(65532), info()),
        ("UNMAP_DMA middle of A (pages 4..7)", *((0, 4 * page) if v1 else ("EINVAL", "ENOENT"))),
        ("DMA A[5] -> sink (after middle unmap)", {"arrived": True}, {"arrived": not v1}),
        ("DMA A[9] -> sink (after middle unmap)", {"arrived": True}, {"arrived": True}),
        ("UNMAP_DMA first page of A", *((16 * page, page) if v1 else ("EINVAL", "ENOENT"))),
        ("DMA A[1] -> sink (after first-page unmap)", {"arrived": not v1}, {"arrived": True}),
        ("UNMAP_DMA B exactly", 4 * page, 4 * page),
        ("UNMAP_DMA nothing mapped", 0, 0),
        ("UNMAP_DMA unaligned", "EINVAL", 0),
        ("UNMAP_DMA ALL with iova", "EINVAL", "EINVAL"),
        ("IOMMU_GET_INFO (before UNMAP_ALL)", type1_info(65534 if v1 else 65533), info()),
        ("UNMAP_DMA ALL", *((page, 12 * page) if v1 else (17 * page, 17 * page))),
        ("UNMAP_DMA ALL again", 0, 0),
        ("IOMMU_GET_INFO (after UNMAP_ALL)", type1_info(), info()),
        ("MAP_DMA sink again", None, None),
        ("DMA A[10] -> sink (A unmapped)", {"arrived": False}, {"arrived": False}),
        ("GROUP_UNSET_CONTAINER", None, None),
    ]
    type1 = [answer(name, a) for name, a, _ in rows]
    compat = [answer(name, b) for name, _, b in rows]
    compat.insert(-1, op("compat IOAS (IOMMU_VFIO_IOAS_GET)", {"ok": True, "value": 1}))
    return type1, compat


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]], iommu_type: int = 3) -> Any:
    return vtd.compare_sequences(a, b, iommu_type)


def failing(checks: list[Any]) -> set[str]:
    return {c.name for c in checks if not c.ok}


def mutate(ops: list[dict[str, Any]], name: str, **change: Any) -> list[dict[str, Any]]:
    """A copy of ``ops`` with op ``name`` answered differently (``errno=`` or ``value=``)."""
    out = [dict(o) for o in ops]
    (target,) = [o for o in out if o["op"] == name]
    target.pop("value", None)
    target.pop("errno", None)
    target.update(ok="errno" not in change, **change)
    return out


@pytest.mark.parametrize("iommu_type", vtd.BOTH_TYPES)
def test_linux_7_3_fails_exactly_on_the_listed_findings(iommu_type: int) -> None:
    checks, found = compare(*linux_7_3(iommu_type), iommu_type=iommu_type)
    assert failing(checks) == vtd.finding_rows((iommu_type,))
    assert all(c.note.startswith(vtd.FINDING_NOTE) for c in checks if not c.ok)
    assert all(c.kind == EFFECT for c in checks)
    assert len(found) > len(vtd.finding_rows((iommu_type,)))


def test_every_accepted_difference_cites_the_seed_or_a_7_3_source_line() -> None:
    cited = re.compile(r"seed 002 line \d+: '|[a-z_/]+\.[ch]:\d+")
    for doc in vtd.DOCUMENTED:
        assert cited.search(doc.cite), doc
    for finding in vtd.FINDINGS:
        assert re.search(r"\.[ch]:\d+", finding.analysis), finding
    for iommu_type in vtd.BOTH_TYPES:
        checks, _ = compare(*linux_7_3(iommu_type), iommu_type=iommu_type)
        accepted = [c for c in checks if c.ok and c.name.endswith("]")]
        assert accepted and all(cited.search(c.note) for c in accepted)


def test_errno_pairs_are_accepted_only_for_their_ops() -> None:
    """SET_IOMMU before SET_CONTAINER's (EINVAL, ENODEV) does not cover another op."""
    a = [op("SET_IOMMU before SET_CONTAINER", errno="EINVAL"), op("MAP_DMA A", errno="EINVAL")]
    b = [op("SET_IOMMU before SET_CONTAINER", errno="ENODEV"), op("MAP_DMA A", errno="ENODEV")]
    checks, found = compare(a, b)
    assert [c.ok for c in checks] == [True, False]
    assert checks[1].note == vtd.UNDOCUMENTED_NOTE and found[1].aspect == "errno"


@pytest.mark.parametrize(
    ("iommu_type", "name", "errno"),
    [
        (3, "SET_IOMMU before SET_CONTAINER", "EPERM"),  # documented pair broken
        (3, "MAP_DMA overlapping A", "EINVAL"),  # agreed, now differs
        (3, "UNMAP_DMA middle of A (pages 4..7)", "EBUSY"),
        (1, "SET_IOMMU bogus type 99", "ENODEV"),  # the pair swapped into agreement is fine
        (1, "UNMAP_DMA ALL with iova", "ENOENT"),
    ],
)
def test_a_mutated_compat_errno_fails_the_verdict_on_that_op(
    iommu_type: int, name: str, errno: str
) -> None:
    """The issue's mutation test for the compat judge: compat returns a different errno."""
    type1, compat = linux_7_3(iommu_type)
    checks, _ = compare(type1, mutate(compat, name, errno=errno), iommu_type)
    mutated = {c.name for c in checks if c.name.startswith(vtd.row_name(iommu_type, name))}
    expected = vtd.finding_rows((iommu_type,))
    if errno == next(o["errno"] for o in type1 if o["op"] == name):
        assert failing(checks) == expected and all(c.ok for c in checks if c.name in mutated)
        return
    assert failing(checks) == expected | {vtd.row_name(iommu_type, name, "errno")}
    (row,) = [c for c in checks if c.name == vtd.row_name(iommu_type, name, "errno")]
    assert row.note == vtd.UNDOCUMENTED_NOTE and row.got == errno


def test_a_compat_dma_that_lands_wrongly_fails() -> None:
    type1, compat = linux_7_3(1)
    name = "DMA A[9] -> sink (after middle unmap)"
    checks, _ = compare(type1, mutate(compat, name, value={"arrived": False}), 1)
    assert failing(checks) == vtd.finding_rows((1,)) | {vtd.row_name(1, name, "value")}


def test_a_finding_that_disappears_changes_the_failing_rows() -> None:
    type1, compat = linux_7_3(3)
    checks, _ = compare(type1, mutate(compat, "SET_IOMMU 3 again", errno="EINVAL"), 3)
    assert failing(checks) == vtd.finding_rows((3,)) - {
        vtd.row_name(3, "SET_IOMMU N again", "outcome")
    }


def test_a_finding_with_other_answers_is_undocumented() -> None:
    type1, compat = linux_7_3(3)
    name = "CHECK_EXTENSION VFIO_NOIOMMU_IOMMU (set)"
    checks, _ = compare(type1, mutate(compat, name, value=2), 3)
    (row,) = [c for c in checks if c.name == vtd.row_name(3, name, "value")]
    assert not row.ok and row.note == vtd.UNDOCUMENTED_NOTE


def test_identical_sequences_pass_with_one_effect_row_per_op() -> None:
    ops = [op("VFIO_GET_API_VERSION", 0), op("MAP_DMA A"), op("UNMAP_DMA B", errno="EINVAL")]
    checks, found = compare(ops, ops)
    assert all(c.ok for c in checks) and not found and len(checks) == 3
    assert [(c.expected, c.got) for c in checks] == [(0, 0), ("success",) * 2, ("EINVAL",) * 2]
    assert {c.kind for c in checks} == {EFFECT}


def test_agreeing_rows_depend_on_the_observation() -> None:
    """The row of an op both sides answer alike compares type1's answer with compat's."""
    (row,), _ = compare([op("MAP_DMA A", errno="EEXIST")], [op("MAP_DMA A", errno="EEXIST")])
    assert (row.expected, row.got, row.ok) == ("EEXIST", "EEXIST", True)
    (row,), _ = compare([op("MAP_DMA A", errno="EEXIST")], [op("MAP_DMA A", errno="EINVAL")])
    assert (row.expected, row.got, row.ok) == ("EEXIST", "EINVAL", False)


def test_outcome_differences_are_not_errno_differences() -> None:
    checks, found = compare(
        [op("SET_IOMMU before SET_CONTAINER", errno="EINVAL")],
        [op("SET_IOMMU before SET_CONTAINER")],
    )
    assert not checks[0].ok and found[0].aspect == "outcome"


def test_get_info_migration_dma_avail_and_argsz_are_documented() -> None:
    name = "IOMMU_GET_INFO (3 mappings)"
    checks, found = compare([op(name, type1_info(65532))], [op(name, info())])
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    aspects = {d.aspect for d in found}
    assert aspects == {"capabilities", "dma_avail", "argsz", "argsz_needed", "migration capability"}
    notes = {c.name.rsplit("[", 1)[1].rstrip("]"): c.note for c in checks}
    assert "line 13" in notes["migration capability"] and "line 8" in notes["dma_avail"]


def test_dma_avail_must_be_u32_max_on_compat() -> None:
    name = "IOMMU_GET_INFO (3 mappings)"
    checks, _ = compare([op(name, type1_info(65532))], [op(name, info(dma_avail=0xFFFF))])
    assert failing(checks) == {vtd.row_name(3, name, "dma_avail")}


def test_unpadded_last_capability_is_an_undocumented_difference() -> None:
    name = "IOMMU_GET_INFO (set)"
    compat = info(argsz=84, argsz_needed=84, cap_sizes={"3": 16, "1": 44})
    checks, _ = compare([op(name, type1_info())], [op(name, compat)])
    assert failing(checks) == {
        vtd.row_name(3, name, aspect) for aspect in ("capability 1 size", "argsz", "argsz_needed")
    }


def test_iova_range_difference_is_one_row_and_argsz_follows_it() -> None:
    name = "IOMMU_GET_INFO (set)"
    checks, found = compare([op(name, type1_info())], [op(name, COMPAT_INFO_EMPTY)])
    assert failing(checks) == {vtd.row_name(3, name, a) for a in ("iova_pgsizes", "iova_ranges")}
    assert not any(d.aspect.startswith("capability 1") for d in found)


def test_type1_v1_split_is_documented_only_for_type1_v1() -> None:
    name = "UNMAP_DMA middle of A (pages 4..7)"
    a, b = [op(name, 0)], [op(name, 4 * vtd.SEQ_PAGE)]
    v1, _ = compare(a, b, iommu_type=1)
    v2, _ = compare(a, b, iommu_type=3)
    assert v1[0].ok and "vfio_compat.c:337-346" in v1[0].note
    assert not v2[0].ok and v2[0].note == vtd.UNDOCUMENTED_NOTE
    wrong, _ = compare(a, [op(name, 8 * vtd.SEQ_PAGE)], iommu_type=1)
    assert not wrong[0].ok


def test_update_vaddr_is_documented() -> None:
    name = "CHECK_EXTENSION VFIO_UPDATE_VADDR (set)"
    (row,), _ = compare([op(name, 1)], [op(name, 0)])
    assert row.ok and "line 15" in row.note


def test_different_operation_lists_fail_once() -> None:
    checks, found = compare([op("A"), op("B")], [op("A")])
    assert len(checks) == 1 and not checks[0].ok and not found
    assert checks[0].kind == SETUP


def test_finding_rows_name_both_iommu_types() -> None:
    rows = vtd.finding_rows()
    assert "type1v2: SET_IOMMU 3 again [outcome]" in rows
    assert "type1: SET_IOMMU 1 again [outcome]" in rows
    assert len(rows) == 2 * len(vtd.FINDINGS)


# --- vtd-pasid and the capability probe, judged on canned observations -----------------


class FakeGuest:
    """Just enough of ``Guest`` for a host half: an edu to bind, and canned method answers."""

    def __init__(self, answers: dict[str, Any], viommu: Any) -> None:
        from types import SimpleNamespace

        self.answers = answers
        self.vm = SimpleNamespace(machine=SimpleNamespace(viommu=viommu, devices=()))

    def call(self, method: str, **kwargs: Any) -> Any:
        if method == "pci.find":
            return ["0000:00:03.0"]
        if method == "pci.bind_vfio":
            device = {"bdf": kwargs["bdf"], "vfio_cdev": "/dev/vfio/devices/vfio0"}
            return {"device": {**device, "iommu_group": 4}}
        return self.answers[method]


def ok(value: Any = None) -> dict[str, Any]:
    return {"ok": True, "value": value}


def pasid_observations(**changes: Any) -> dict[str, Any]:
    """What 7.3 under x-pasid-mode gives ``vtd.pasid`` on edu (see ``SRC_PASID_NO_CAP``)."""
    from harness.profiles import make_viommu

    viommu = make_viommu("vtd", {"pasid_mode": True})
    assert viommu is not None
    _, ecap = predict_registers(dict(viommu.properties()))
    result = {
        "config_size": 256,
        "hw_info": {"ecap": ecap.encode(), "max_pasid_log2": 0},
        "attach_pasid_plain_hwpt": {"ok": False, "errno": "EINVAL"},
        "alloc_pasid_hwpt_a": ok(3), "alloc_pasid_hwpt_b": ok(4), "attach_rid": ok(3),
        "dma_before": "A", "attach_pasid": ok(4), "attach_pasid_too_large": ok(4),
        "pasid_entries": [0], "dma_during": "A", "detach_pasid": ok(),
        "detach_pasid_too_large": ok(), "dma_after": "A", "detach_pasid_not_attached": ok(),
    }  # fmt: skip
    result.update(changes)
    return result


def run_pasid(result: dict[str, Any]) -> Any:
    from harness.profiles import make_viommu

    guest = FakeGuest({"vtd.pasid": result}, make_viommu("vtd", {"pasid_mode": True}))
    return vtd.vtd_pasid(guest, {"seed": 1})


def test_vtd_pasid_passes_on_what_7_3_answers() -> None:
    verdict = run_pasid(pasid_observations())
    assert verdict.passed, verdict.summary()
    assert verdict.count(EFFECT) >= 10 and verdict.count(SETUP) >= 3


@pytest.mark.parametrize(
    ("change", "row"),
    [
        ({"dma_during": "B"}, "untagged DMA while PASIDs 1 and 2^20 are on HWPT B goes through"),
        ({"pasid_entries": [0, 1]}, "PASID-table entries of edu after both PASID attaches"),
        ({"attach_pasid": {"ok": False, "errno": "EINVAL"}}, "PASID 1 attach to HWPT B"),
        ({"attach_pasid_plain_hwpt": ok(2)}, "PASID 1 attach to a HWPT without"),
        ({"dma_after": "neither (A dst 00, B dst 00)"}, "untagged DMA after the PASID detaches"),
    ],
)
def test_vtd_pasid_fails_on_the_row_a_mutation_breaks(change: dict[str, Any], row: str) -> None:
    verdict = run_pasid(pasid_observations(**change))
    assert [c.name for c in verdict.failures if c.name.startswith(row)] and len(
        verdict.failures
    ) == 1, verdict.summary()


def test_hwpt_flag_rows_follow_the_ecap_rules() -> None:
    _, ecap = predict_registers({"x-scalable-mode": True, "x-flts": True})
    refused = {"ok": False, "errno": "EOPNOTSUPP"}
    good = vtd.hwpt_flag_checks(ecap, {"dirty_tracking": refused, "alloc_pasid": ok(5)})
    assert [c.ok for c in good] == [True, True] and {c.kind for c in good} == {EFFECT}
    bad = vtd.hwpt_flag_checks(ecap, {"dirty_tracking": ok(6), "alloc_pasid": refused})
    assert [c.ok for c in bad] == [False, False]
    dirty = Ecap.decode(ecap.encode() | 1 << 45 | 1 << 46 | 1 << 48)
    assert vtd.dirty_tracking_expected(dirty) == "success"
    assert vtd.paging_expected(Ecap.decode(ecap.encode() & ~(1 << 47 | 1 << 46))) == "EOPNOTSUPP"


def test_guest_row_kinds_are_the_host_kinds_and_ship_to_guests() -> None:
    from harness.agent.bundle import _files
    from harness.scenarios import base
    from harness.scenarios.guest import _rows

    assert (_rows.EFFECT, _rows.SETUP) == (base.EFFECT, base.SETUP)
    shipped = {str(p) for p in _files()}
    assert any(p.endswith("harness/scenarios/guest/_rows.py") for p in shipped)
    assert not any(p.endswith("harness/scenarios/base.py") for p in shipped)


def test_succeeds_effect_marks_the_success_row_as_an_effect() -> None:
    from harness.driver.checks import CheckTable
    from harness.scenarios.guest._rows import succeeds_effect

    table = CheckTable("t")
    assert succeeds_effect(table, "bind again", lambda: 7) == 7
    table.succeeds("a step", lambda: None)
    assert [(r["name"], r["kind"]) for r in table.rows] == [
        ("bind again", EFFECT),
        ("a step", SETUP),
    ]


def test_the_differential_declares_its_findings_to_generic_runners() -> None:
    """tests/vm/test_scenarios.py expects exactly these rows to fail, no more, no fewer."""
    from harness.scenarios.base import get

    assert get("vtd-compat-differential").expected_failures() == vtd.finding_rows(vtd.BOTH_TYPES)
    assert get("vtd-pasid").expected_failures() == frozenset()
