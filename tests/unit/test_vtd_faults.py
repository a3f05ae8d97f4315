"""Fault records, fault reason names and page-request descriptors."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.vtd import FAULT_REASONS, FaultKind, FaultRecord, PageRequest, fault_reason_name
from harness.vtd.reasons import fault_kind

pytestmark = pytest.mark.tier0

KSRC = Path(os.environ.get("VIOMMU_KSRC", "/nonexistent"))
DMAR_C = KSRC / "drivers/iommu/intel/dmar.c"


def qwords(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


def qemu_frcd(sid: int, addr: int, reason: int, is_write: bool, pasid: int | None = None) -> bytes:
    """A fault record as QEMU's vtd_record_frcd + vtd_set_frcd_and_update_ppf write it."""
    lo = addr & ~0xFFF
    hi = (sid & 0xFFFF) | (reason & 0xFF) << 32 | 1 << 63
    if not is_write:
        hi |= 1 << 62
    if pasid is not None:
        hi |= 1 << 31 | (pasid & 0xFFFFF) << 40
    return qwords(lo, hi)


def kernel_reads(data: bytes) -> dict[str, int]:
    """What dmar_fault() reads with readl/readq and the dma_frcd_* macros (iommu.h)."""
    lo, hi = struct.unpack("<2Q", data)
    top, mid = hi >> 32, hi & 0xFFFF_FFFF
    return {
        "F": (top >> 31) & 1,
        "type": (top >> 30) & 1,
        "reason": top & 0xFF,
        "pasid": (top >> 8) & 0xFFFFF,
        "source_id": mid & 0xFFFF,
        "pasid_present": (mid >> 31) & 1,
        "guest_addr": lo & (((1 << 64) - 1) << 12) & ((1 << 64) - 1),
    }


def test_qemu_first_level_fault_record() -> None:
    data = qemu_frcd(sid=0x0018, addr=0x800_0123, reason=0x71, is_write=True, pasid=0)
    rec = FaultRecord.decode(data)
    assert rec.sid == 0x18 and (rec.bus, rec.dev, rec.fn) == (0, 3, 0)
    assert rec.address == 0x800_0000 and rec.reason == 0x71 and rec.pasid == 0
    assert rec.is_write and not rec.is_read and rec.request_type == "write" and rec.fault
    assert rec.reason_name == "SM: Present bit in first-level paging entry is clear"
    assert rec.kind == FaultKind.DMA_REMAP
    assert rec.encode() == data


def test_legacy_read_fault_without_pasid() -> None:
    rec = FaultRecord.decode(qemu_frcd(sid=0x0310, addr=0x1000, reason=0x06, is_write=False))
    assert rec.pasid is None and rec.is_read and not rec.is_write
    assert rec.reason_name == "PTE Read access is not set"
    assert (rec.bus, rec.dev, rec.fn) == (3, 2, 0)


def test_interrupt_remapping_fault() -> None:
    rec = FaultRecord(sid=0x00F8, address=0x12 << 48, reason=0x22)
    assert rec.kind == FaultKind.INTR_REMAP and rec.interrupt_index == 0x12
    assert rec.reason_name == "Present field in the IRTE entry is clear"


def test_request_types_from_t2_t1() -> None:
    assert FaultRecord(sid=0, t2=True).request_type == "page-request"
    assert FaultRecord(sid=0, t2=True).is_page_request
    assert FaultRecord(sid=0, t1=True, t2=True).request_type == "atomic"
    assert not FaultRecord(sid=0, t1=True, t2=True).is_write


def test_dma_helper() -> None:
    rec = FaultRecord.dma(0x18, 0x8000000, 0x71, is_write=False, pasid=5)
    assert rec.t1 and rec.pasid == 5 and rec.encode() == qemu_frcd(0x18, 0x8000000, 0x71, False, 5)


records = st.builds(
    FaultRecord,
    sid=st.integers(0, 0xFFFF),
    address=st.integers(0, (1 << 52) - 1).map(lambda p: p << 12),
    reason=st.integers(0, 0xFF),
    pasid=st.none() | st.integers(0, 0xFFFFF),
    t1=st.booleans(),
    t2=st.booleans(),
    priv=st.booleans(),
    exe=st.booleans(),
    at=st.integers(0, 2),
    fault=st.booleans(),
)


@settings(max_examples=200)
@given(records)
def test_round_trip_and_the_kernel_reads_the_same(rec: FaultRecord) -> None:
    data = rec.encode()
    assert len(data) == 16 and FaultRecord.decode(data) == rec
    seen = kernel_reads(data)
    assert seen["source_id"] == rec.sid and seen["reason"] == rec.reason
    assert seen["guest_addr"] == rec.address and seen["F"] == rec.fault
    assert seen["type"] == rec.t1
    assert (seen["pasid"] if seen["pasid_present"] else None) == rec.pasid


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16))
def test_any_16_bytes_decode_exactly_or_name_the_field(data: bytes) -> None:
    try:
        rec = FaultRecord.decode(data)
    except DecodeError as exc:
        assert exc.field.startswith("FaultRecord.")
    else:
        assert rec.encode() == data


@pytest.mark.parametrize(
    ("lo", "hi", "field"),
    [
        (0x1001, 1 << 63, "FaultRecord.RSVD[0]"),
        (0x1000, 1 << 63 | 1 << 16, "FaultRecord.RSVD[80]"),
        (0x1000, 1 << 63 | 0xFFF << 16, "FaultRecord.RSVD[91:80]"),
        (0x1000, 1 << 63 | 5 << 40, "FaultRecord.PV"),
        (0x1000, 1 << 63 | 3 << 60, "FaultRecord.AT"),
    ],
)
def test_decode_errors_name_the_field(lo: int, hi: int, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        FaultRecord.decode(qwords(lo, hi))
    assert info.value.field == field


@pytest.mark.parametrize("size", [0, 8, 15, 17, 32])
def test_fault_record_length_must_be_16(size: int) -> None:
    with pytest.raises(DecodeError, match="expected 16 bytes"):
        FaultRecord.decode(bytes(size))


@pytest.mark.parametrize(
    ("rec", "field"),
    [
        (FaultRecord(sid=0x1_0000), "FaultRecord.SID"),
        (FaultRecord(sid=1, address=0x1234), "FaultRecord.FI"),
        (FaultRecord(sid=1, pasid=1 << 20), "FaultRecord.PV"),
        (FaultRecord(sid=1, reason=0x100), "FaultRecord.FR"),
        (FaultRecord(sid=1, at=3), "FaultRecord.AT"),
        (FaultRecord(sid=1, t1=2), "FaultRecord.T1"),  # type: ignore[arg-type]
    ],
)
def test_encode_errors_name_the_field(rec: FaultRecord, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        rec.encode()
    assert info.value.field == field


def test_reason_names_from_the_brief() -> None:
    assert fault_reason_name(0x71) == "SM: Present bit in first-level paging entry is clear"
    assert fault_reason_name(0x05) == "PTE Write access is not set"
    assert fault_reason_name(0x0E) == "Unknown" and fault_reason_name(0x33) == "Unknown"
    assert fault_kind(0x26) == FaultKind.INTR_REMAP and fault_kind(0x27) == FaultKind.UNKNOWN
    assert fault_kind(0x90) == FaultKind.DMA_REMAP and fault_kind(0x91) == FaultKind.UNKNOWN


def _kernel_tables(source: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, base in (
        ("dma_remap_fault_reasons", 0x00),
        ("irq_remap_fault_reasons", 0x20),
        ("dma_remap_sm_fault_reasons", 0x30),
    ):
        match = re.search(rf"\b{name}\[\]\s*=\s*\{{(.*?)\n\}};", source, re.S)
        assert match, name
        body = re.sub(r"/\*.*?\*/", "", match.group(1), flags=re.S)
        for index, text in enumerate(re.findall(r'"((?:[^"\\]|\\.)*)"', body)):
            out.setdefault(base + index, text)
    return out


def test_reason_table_matches_the_kernel_source() -> None:
    if not DMAR_C.is_file():
        pytest.skip(f"kernel source not present: {DMAR_C} (set VIOMMU_KSRC)")
    kernel = _kernel_tables(DMAR_C.read_text())
    for code in range(256):
        assert fault_reason_name(code) == kernel.get(code, "Unknown"), hex(code)
    assert {c for c, t in kernel.items() if t != "Unknown"} == set(FAULT_REASONS)


# -- page requests ------------------------------------------------------------------------


def qemu_prd(
    *,
    pp: bool,
    rid: int,
    pasid: int,
    exr: bool,
    pmr: bool,
    rd: bool,
    wr: bool,
    lpig: bool,
    prgi: int,
    addr: int,
) -> tuple[int, int]:
    """A page request descriptor built with QEMU's VTD_PRD_* macros."""
    lo = 1 | int(pp) << 8 | (rid & 0xFFFF) << 16 | (pasid & 0xFFFFF) << 32
    lo |= int(exr) << 52 | int(pmr) << 53
    hi = int(rd) | int(wr) << 1 | int(lpig) << 2 | (prgi & 0x1FF) << 3 | addr & ~0xFFF
    return lo, hi  # fmt: skip


def kernel_page_req_dsc(lo: int, hi: int) -> dict[str, int]:
    """struct page_req_dsc (prq.c) bitfields, read from the two qwords."""
    return {
        "type": lo & 0xFF,
        "pasid_present": (lo >> 8) & 1,
        "rid": (lo >> 16) & 0xFFFF,
        "pasid": (lo >> 32) & 0xFFFFF,
        "exe_req": (lo >> 52) & 1,
        "pm_req": (lo >> 53) & 1,
        "rd_req": hi & 1,
        "wr_req": (hi >> 1) & 1,
        "lpig": (hi >> 2) & 1,
        "prg_index": (hi >> 3) & 0x1FF,
        "addr": hi >> 12,
    }


def test_qemu_page_request_decodes() -> None:
    lo, hi = qemu_prd(
        pp=True, rid=0x18, pasid=0x42, exr=False, pmr=False, rd=True, wr=True, lpig=True,
        prgi=0x1FF, addr=0x7FFF_F000,
    )  # fmt: skip
    req = PageRequest.decode(qwords(lo, hi))
    assert req.sid == 0x18 and (req.bus, req.dev, req.fn) == (0, 3, 0) and req.pasid == 0x42
    assert req.is_read and req.is_write and req.lpig and req.prgi == 0x1FF
    assert req.address == 0x7FFF_F000 and req.needs_response and not req.is_stop_marker
    assert req.private_data is None and req.encode() == qwords(lo, hi)


def test_page_request_slot_with_private_data() -> None:
    lo, hi = qemu_prd(
        pp=False, rid=0x20, pasid=0, exr=False, pmr=False, rd=False, wr=False, lpig=True,
        prgi=3, addr=0,
    )  # fmt: skip
    data = qwords(lo | 1 << 9, hi, 0xDEAD, 0xBEEF)
    req = PageRequest.decode(data)
    assert req.pasid is None and req.pdp and req.private_data == (0xDEAD, 0xBEEF)
    assert req.is_stop_marker and not req.needs_response
    assert req.encode() == data


requests = st.builds(
    PageRequest,
    sid=st.integers(0, 0xFFFF),
    address=st.integers(0, (1 << 52) - 1).map(lambda p: p << 12),
    pasid=st.none() | st.integers(0, 0xFFFFF),
    is_read=st.booleans(),
    is_write=st.booleans(),
    exe=st.booleans(),
    priv=st.booleans(),
    lpig=st.booleans(),
    prgi=st.integers(0, 0x1FF),
    pdp=st.booleans(),
    private_data=st.none()
    | st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1)),
)


@settings(max_examples=200)
@given(requests)
def test_page_request_round_trip_and_kernel_view(req: PageRequest) -> None:
    data = req.encode()
    assert len(data) == (16 if req.private_data is None else 32)
    assert PageRequest.decode(data) == req
    lo, hi = struct.unpack("<2Q", data[:16])
    seen = kernel_page_req_dsc(lo, hi)
    assert seen["type"] == 1 and seen["rid"] == req.sid and seen["prg_index"] == req.prgi
    assert seen["addr"] << 12 == req.address and seen["wr_req"] == req.is_write
    assert (seen["pasid"] if seen["pasid_present"] else None) == req.pasid


@pytest.mark.parametrize(
    ("lo", "hi", "field"),
    [
        (0x0, 0, "PageRequest.Type"),
        (0x2, 0, "PageRequest.Type"),
        (0x1 | 1 << 10, 0, "PageRequest.RSVD[10]"),
        (0x1 | 1 << 54, 0, "PageRequest.RSVD[54]"),
        (0x1 | 7 << 32, 0, "PageRequest.PV"),
    ],
)
def test_page_request_decode_errors(lo: int, hi: int, field: str) -> None:
    with pytest.raises(DecodeError) as info:
        PageRequest.decode(qwords(lo, hi))
    assert info.value.field == field


@pytest.mark.parametrize("size", [0, 8, 24, 31, 33, 64])
def test_page_request_lengths(size: int) -> None:
    with pytest.raises(DecodeError, match="expected 16 or 32 bytes"):
        PageRequest.decode(bytes(size))


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (PageRequest(sid=1 << 16), "PageRequest.RID"),
        (PageRequest(sid=1, prgi=0x200), "PageRequest.PRGI"),
        (PageRequest(sid=1, address=0x10), "PageRequest.ADDR"),
        (PageRequest(sid=1, pasid=-1), "PageRequest.PASID"),
        (PageRequest(sid=1, private_data=(1,)), "PageRequest.private_data"),  # type: ignore[arg-type]
        (PageRequest(sid=1, private_data=(1, 1 << 64)), "PageRequest.private_data"),
    ],
)
def test_page_request_encode_errors(req: PageRequest, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        req.encode()
    assert info.value.field == field
