"""CAP_REG / ECAP_REG decoding: measured QEMU vectors, the kernel's own macros, round trips."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.vtd import Cap, Ecap

pytestmark = pytest.mark.tier0

U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)

# Measured on QEMU 10.0.2 (TCG), intremap=on,x-scalable-mode=on,caching-mode=on,aw-bits=48
CAP_FLTS = 0x01D2008C222F0686
ECAP_FLTS = 0x0000880000F00F4A  # ... plus x-flts=on
CAP_SLTS = 0x00D2008C222F0686
ECAP_SLTS = 0x0000480080F00F4A  # ... without x-flts

KSRC = Path(os.environ.get("VIOMMU_KSRC", "/nonexistent"))
IOMMU_H = KSRC / "drivers/iommu/intel/iommu.h"

# drivers/iommu/intel/iommu.h (Linux 7.3), transcribed: name -> (macro, our reading).
KERNEL_CAP: dict[str, tuple[Callable[[int], int], Callable[[Cap], int]]] = {
    "cap_esrtps": (lambda c: (c >> 63) & 1, lambda r: r.esrtps),
    "cap_esirtps": (lambda c: (c >> 62) & 1, lambda r: r.esirtps),
    "cap_ecmds": (lambda c: (c >> 61) & 1, lambda r: r.ecmds),
    "cap_fl5lp_support": (lambda c: (c >> 60) & 1, lambda r: r.fl5lp),
    "cap_pi_support": (lambda c: (c >> 59) & 1, lambda r: r.pi),
    "cap_fl1gp_support": (lambda c: (c >> 56) & 1, lambda r: r.fl1gp),
    "cap_read_drain": (lambda c: (c >> 55) & 1, lambda r: r.drd),
    "cap_write_drain": (lambda c: (c >> 54) & 1, lambda r: r.dwd),
    "cap_max_amask_val": (lambda c: (c >> 48) & 0x3F, lambda r: r.mamv),
    "cap_num_fault_regs": (lambda c: ((c >> 40) & 0xFF) + 1, lambda r: r.num_fault_records),
    "cap_pgsel_inv": (lambda c: (c >> 39) & 1, lambda r: r.psi),
    "cap_super_page_val": (lambda c: (c >> 34) & 0xF, lambda r: r.sllps),
    "cap_fault_reg_offset": (
        lambda c: ((c >> 24) & 0x3FF) * 16,
        lambda r: r.fault_recording_offset,
    ),
    "cap_max_fault_reg_offset": (
        lambda c: ((c >> 24) & 0x3FF) * 16 + (((c >> 40) & 0xFF) + 1) * 16,
        lambda r: r.fault_recording_end,
    ),
    "cap_zlr": (lambda c: (c >> 22) & 1, lambda r: r.zlr),
    "cap_isoch": (lambda c: (c >> 23) & 1, lambda r: (r.reserved >> 23) & 1),
    "cap_mgaw": (lambda c: ((c >> 16) & 0x3F) + 1, lambda r: r.max_guest_address_width),
    "cap_sagaw": (lambda c: (c >> 8) & 0x1F, lambda r: r.sagaw),
    "cap_caching_mode": (lambda c: (c >> 7) & 1, lambda r: r.cm),
    "cap_phmr": (lambda c: (c >> 6) & 1, lambda r: r.phmr),
    "cap_plmr": (lambda c: (c >> 5) & 1, lambda r: r.plmr),
    "cap_rwbf": (lambda c: (c >> 4) & 1, lambda r: r.rwbf),
    "cap_afl": (lambda c: (c >> 3) & 1, lambda r: r.afl),
    "cap_ndoms": (lambda c: 1 << (4 + 2 * (c & 0x7)), lambda r: r.num_domains),
}

KERNEL_ECAP: dict[str, tuple[Callable[[int], int], Callable[[Ecap], int]]] = {
    "ecap_pms": (lambda e: (e >> 51) & 1, lambda r: r.pms),
    "ecap_rps": (lambda e: (e >> 49) & 1, lambda r: r.rps),
    "ecap_smpwc": (lambda e: (e >> 48) & 1, lambda r: r.smpwcs),
    "ecap_flts": (lambda e: (e >> 47) & 1, lambda r: r.flts),
    "ecap_slts": (lambda e: (e >> 46) & 1, lambda r: r.slts),
    "ecap_slads": (lambda e: (e >> 45) & 1, lambda r: r.slads),
    "ecap_smts": (lambda e: (e >> 43) & 1, lambda r: r.smts),
    "ecap_dit": (lambda e: (e >> 41) & 1, lambda r: r.dit),
    "ecap_pds": (lambda e: (e >> 42) & 1, lambda r: r.pds),
    "ecap_pasid": (lambda e: (e >> 40) & 1, lambda r: r.pasid),
    "ecap_pss": (lambda e: (e >> 35) & 0x1F, lambda r: r.pss),
    "ecap_eafs": (lambda e: (e >> 34) & 1, lambda r: r.eafs),
    "ecap_nwfs": (lambda e: (e >> 33) & 1, lambda r: r.nwfs),
    "ecap_srs": (lambda e: (e >> 31) & 1, lambda r: r.srs),
    "ecap_ers": (lambda e: (e >> 30) & 1, lambda r: r.ers),
    "ecap_prs": (lambda e: (e >> 29) & 1, lambda r: r.prs),
    "ecap_broken_pasid": (lambda e: (e >> 28) & 1, lambda r: (r.reserved >> 28) & 1),
    "ecap_dis": (lambda e: (e >> 27) & 1, lambda r: (r.reserved >> 27) & 1),
    "ecap_nest": (lambda e: (e >> 26) & 1, lambda r: r.nest),
    "ecap_mts": (lambda e: (e >> 25) & 1, lambda r: r.mts),
    "ecap_iotlb_offset": (lambda e: ((e >> 8) & 0x3FF) * 16, lambda r: r.iotlb_register_offset),
    "ecap_max_iotlb_offset": (
        lambda e: ((e >> 8) & 0x3FF) * 16 + 16,
        lambda r: r.iotlb_register_offset + 16,
    ),
    "ecap_coherent": (lambda e: e & 1, lambda r: r.c),
    "ecap_qis": (lambda e: (e >> 1) & 1, lambda r: r.qi),
    "ecap_pass_through": (lambda e: (e >> 6) & 1, lambda r: r.pt),
    "ecap_eim_support": (lambda e: (e >> 4) & 1, lambda r: r.eim),
    "ecap_ir_support": (lambda e: (e >> 3) & 1, lambda r: r.ir),
    "ecap_dev_iotlb_support": (lambda e: (e >> 2) & 1, lambda r: r.dt),
    "ecap_max_handle_mask": (lambda e: (e >> 20) & 0xF, lambda r: r.max_handle_mask),
    "ecap_sc_support": (lambda e: (e >> 7) & 1, lambda r: r.sc),
}


def test_measured_cap_with_x_flts() -> None:
    cap = Cap.decode(CAP_FLTS)
    assert cap.nd == 6 and cap.num_domains == 65536
    assert cap.cm and cap.psi and cap.dwd and cap.drd and cap.fs1gp
    assert cap.sagaw == 0b00110 and cap.supported_address_widths == (39, 48)
    assert cap.supported_levels == (3, 4)
    assert cap.max_guest_address_width == 48
    assert cap.fault_recording_offset == 0x220 and cap.num_fault_records == 1
    assert cap.fault_record_offsets == (0x220,)
    assert cap.second_stage_page_sizes == (4096, 2 << 20, 1 << 30)
    assert cap.mamv == 18 and not cap.esrtps and cap.reserved == 0
    assert cap.encode() == CAP_FLTS


def test_measured_cap_without_x_flts_differs_only_in_fs1gp() -> None:
    with_flts, without = Cap.decode(CAP_FLTS), Cap.decode(CAP_SLTS)
    assert not without.fs1gp
    assert with_flts.fields() | {"FS1GP": 0} == without.fields()


def test_measured_ecap_with_x_flts() -> None:
    ecap = Ecap.decode(ECAP_FLTS)
    assert ecap.smts and ecap.fsts and ecap.flts
    assert not ecap.ssts and not ecap.nest and not ecap.pasid and not ecap.srs
    assert ecap.qi and ecap.ir and ecap.pt and not ecap.eim and not ecap.dt
    assert ecap.iotlb_register_offset == 0xF0 and ecap.mhmv == 0xF
    assert ecap.first_stage_supported and not ecap.nest_parent_supported
    assert ecap.encode() == ECAP_FLTS


def test_measured_ecap_without_x_flts() -> None:
    ecap = Ecap.decode(ECAP_SLTS)
    assert ecap.smts and ecap.ssts and ecap.slts and ecap.srs
    assert not ecap.fsts and not ecap.nest and not ecap.pasid
    assert not ecap.first_stage_supported and not ecap.nest_parent_supported
    assert ecap.encode() == ECAP_SLTS


@pytest.mark.parametrize("value", [CAP_FLTS, CAP_SLTS, 0, (1 << 64) - 1])
def test_kernel_cap_macros_agree(value: int) -> None:
    cap = Cap.decode(value)
    for name, (macro, ours) in KERNEL_CAP.items():
        assert int(ours(cap)) == macro(value), name


@pytest.mark.parametrize("value", [ECAP_FLTS, ECAP_SLTS, 0, (1 << 64) - 1])
def test_kernel_ecap_macros_agree(value: int) -> None:
    ecap = Ecap.decode(value)
    for name, (macro, ours) in KERNEL_ECAP.items():
        assert int(ours(ecap)) == macro(value), name


@settings(max_examples=200)
@given(U64)
def test_kernel_macros_agree_on_any_value(value: int) -> None:
    cap, ecap = Cap.decode(value), Ecap.decode(value)
    for name, (cmacro, cours) in KERNEL_CAP.items():
        assert int(cours(cap)) == cmacro(value), name
    for name, (emacro, eours) in KERNEL_ECAP.items():
        assert int(eours(ecap)) == emacro(value), name


_DEFINE = re.compile(r"^#define\s+(?P<name>(?:cap|ecap)_\w+)\((?P<arg>[ce])\)\s+(?P<body>.+)$")


def kernel_macros(header: str) -> dict[str, Callable[[int], int]]:
    """The header's one-argument cap_*/ecap_* macros, evaluated as Python."""
    env: dict[str, object] = {}
    out: dict[str, Callable[[int], int]] = {}
    for line in header.replace("\\\n", " ").splitlines():
        match = _DEFINE.match(line.strip())
        if match is None:
            continue
        body = re.sub(r"/\*.*?\*/|\((?:unsigned long|u64)\)", "", match["body"])
        body = body.replace("ULL", "")
        func = eval(f"lambda {match['arg']}: {body}", env)  # the kernel's own C expression
        env[match["name"]] = func
        out[match["name"]] = func
    return out


def test_kernel_header_macros_match_the_transcription() -> None:
    if not IOMMU_H.is_file():
        pytest.skip(f"kernel source not present: {IOMMU_H} (set VIOMMU_KSRC)")
    macros = kernel_macros(IOMMU_H.read_text())
    assert {"cap_mgaw", "cap_ndoms", "ecap_iotlb_offset", "ecap_qis"} <= set(macros)
    probes = [0, (1 << 64) - 1, CAP_FLTS, ECAP_FLTS, *(1 << n for n in range(64))]
    for name, header in macros.items():
        table = KERNEL_CAP if name.startswith("cap_") else KERNEL_ECAP
        assert name in table, f"kernel macro {name} not covered by the transcription"
        ours = table[name][0]
        for value in probes:
            got, want = ours(value), header(value)
            assert got == want or (got in (0, 1) and bool(got) == bool(want)), (name, value)


@settings(max_examples=200)
@given(U64)
def test_cap_round_trip_any_value(value: int) -> None:
    assert Cap.decode(value).encode() == value


@settings(max_examples=200)
@given(U64)
def test_ecap_round_trip_any_value(value: int) -> None:
    assert Ecap.decode(value).encode() == value


@settings(max_examples=200)
@given(U64)
def test_strict_decode_round_trips_or_names_the_field(value: int) -> None:
    for cls in (Cap, Ecap):
        try:
            reg = cls.decode(value, strict=True)
        except DecodeError as exc:
            assert exc.field.startswith(("CAP_REG.", "ECAP_REG."))
        else:
            assert reg.reserved == 0 and reg.encode() == value


def test_reserved_bits_kept_by_default() -> None:
    cap = Cap.decode(CAP_FLTS | 1 << 38 | 1 << 57)
    assert cap.reserved == 1 << 38 | 1 << 57
    assert cap.encode() == CAP_FLTS | 1 << 38 | 1 << 57


def test_strict_rejects_reserved_bits_naming_them() -> None:
    with pytest.raises(DecodeError) as info:
        Cap.decode(CAP_FLTS | 1 << 38, strict=True)
    assert info.value.field == "CAP_REG.RSVD[38]"
    with pytest.raises(DecodeError) as info:
        Ecap.decode(ECAP_FLTS | 0b11 << 18, strict=True)
    assert info.value.field == "ECAP_REG.RSVD[19:18]"


def test_strict_rejects_reserved_nd_and_sagaw() -> None:
    with pytest.raises(DecodeError, match="ND"):
        Cap.decode(CAP_FLTS | 7, strict=True)
    with pytest.raises(DecodeError, match="SAGAW"):
        Cap.decode(CAP_FLTS | 1 << 8, strict=True)
    assert Cap.decode(CAP_FLTS, strict=True).nd == 6


@pytest.mark.parametrize("bad", [-1, 1 << 64, "0x10", 1.5, True, None])
def test_decode_rejects_non_register_values(bad: object) -> None:
    with pytest.raises(DecodeError) as info:
        Cap.decode(bad)  # type: ignore[arg-type]
    assert info.value.field == "CAP_REG"
    with pytest.raises(DecodeError):
        Ecap.decode(bad)  # type: ignore[arg-type]


def test_encode_from_fields() -> None:
    cap = Cap(nd=6, sagaw=0b110, mgaw=47, fro=0x22, sllps=3, psi=True, mamv=18, cm=True)
    assert cap.encode() == 0x0012008C222F0686
    assert Ecap(qi=True, iro=0xF, ir=True, mhmv=0xF, pt=True).encode() == 0xF00F4A


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"nd": 8}, "CAP_REG.ND"),
        ({"mgaw": 64}, "CAP_REG.MGAW"),
        ({"fro": 1 << 10}, "CAP_REG.FRO"),
        ({"nfr": -1}, "CAP_REG.NFR"),
        ({"cm": 2}, "CAP_REG.CM"),
        ({"sagaw": "4"}, "CAP_REG.SAGAW"),
        ({"reserved": 1}, "CAP_REG.reserved"),
        ({"reserved": 1 << 64}, "CAP_REG.reserved"),
    ],
)
def test_cap_encode_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(EncodeError) as info:
        Cap(**kwargs).encode()  # type: ignore[arg-type]
    assert info.value.field == field


def test_ecap_encode_rejects_wide_pss() -> None:
    with pytest.raises(EncodeError) as info:
        Ecap(pss=32).encode()
    assert info.value.field == "ECAP_REG.PSS"
    assert Ecap(pasid=True, pss=19).max_pasid_bits == 20


def test_ecap_kernel_capability_helpers() -> None:
    nesting = Ecap(smts=True, nest=True, ssts=True, fsts=True)
    assert nesting.nest_parent_supported
    assert not Ecap(smts=True, nest=True).nest_parent_supported
    assert Ecap(smts=True, ssads=True, smpwcs=True).dirty_tracking_supported
    assert not Ecap(smts=True, ssads=True).dirty_tracking_supported
    assert Ecap(smts=True, pasid=True).pasid_supported
    assert not Ecap(pasid=True).pasid_supported
