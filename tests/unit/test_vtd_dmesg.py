"""Parsing the intel-iommu driver's fault lines out of dmesg, in every kernel format."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from harness.errors import DecodeError
from harness.vtd import (
    DmarFault,
    FaultRecord,
    InvalidPageRequest,
    PageRequest,
    dmar_faults,
    parse_dmesg_faults,
)

pytestmark = pytest.mark.tier0

KSRC = Path(os.environ.get("VIOMMU_KSRC", "/nonexistent"))
DMAR_C = KSRC / "drivers/iommu/intel/dmar.c"

BRIEF_LINE = (
    "DMAR: [DMA Write PASID 0x0] Request device [0000:00:03.0] fault addr 0x8000000 "
    "[fault reason 0x71] SM: Present bit in first-level paging entry is clear"
)

# dmar_fault_do_one() in Linux 7.3 (pr_fmt "DMAR: "), in the order the source has them.
FMT_7_IR = (
    "[INTR-REMAP] Request device [%04x:%02x:%02x.%d] fault index 0x%llx [fault reason 0x%02x] %s"
)
FMT_7_NO_PASID = (
    "[%s NO_PASID] Request device [%04x:%02x:%02x.%d] fault addr 0x%llx [fault reason 0x%02x] %s"
)
FMT_7_PASID = (
    "[%s PASID 0x%x] Request device [%04x:%02x:%02x.%d] fault addr 0x%llx [fault reason 0x%02x] %s"
)
# Older mainline formats.
FMT_5_PASID = "[%s] Request device [%02x:%02x.%d] PASID %x fault addr %llx [fault reason %02d] %s"
FMT_4 = "[%s] Request device [%02x:%02x.%d] fault addr %llx [fault reason %02d] %s"
FMT_4_IR = "[INTR-REMAP] Request device [%02x:%02x.%d] fault index %llx [fault reason %02d] %s"


def printk(fmt: str, *args: object) -> str:
    """A DMAR line as the kernel prints it (``%llx`` is C for Python's ``%x``)."""
    return "DMAR: " + fmt.replace("%ll", "%") % args


def test_brief_example() -> None:
    (fault,) = parse_dmesg_faults(BRIEF_LINE)
    assert isinstance(fault, DmarFault)
    assert fault.kind == "dma" and fault.is_write is True and fault.pasid == 0
    assert fault.bdf == "0000:00:03.0" and (fault.bus, fault.dev, fault.fn) == (0, 3, 0)
    assert fault.sid == 0x18 and fault.address == 0x800_0000 and fault.reason == 0x71
    assert fault.reason_name == "SM: Present bit in first-level paging entry is clear"
    assert fault.line == BRIEF_LINE


def test_the_brief_line_matches_the_record_qemu_wrote() -> None:
    (fault,) = dmar_faults(BRIEF_LINE)
    record = FaultRecord.dma(0x18, 0x800_0000, 0x71, is_write=True, pasid=0)
    assert fault.matches(record)
    assert fault.to_fault_record() == record
    assert fault.to_fault_record().reason_name == fault.reason_name
    assert not fault.matches(FaultRecord.dma(0x18, 0x800_0000, 0x71, is_write=False, pasid=0))
    assert not fault.matches(FaultRecord.dma(0x18, 0x800_0000, 0x71, is_write=True))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            printk(FMT_7_NO_PASID, "DMA Read", 0, 0, 3, 0, 0x7F000, 0x06,
                   "PTE Read access is not set"),
            ("dma", 0x18, 0x7F000, 0x06, None, False, 0),
        ),
        (
            printk(FMT_7_PASID, "DMA Write", 0x1F, 1, 0x80, 0x1F, 7, 0xFFFF_F000, 0x59,
                   "SM: Present bit in PASID Table Entry is clear"),
            ("dma", 0x80FF, 0xFFFF_F000, 0x59, 0x1F, True, 1),
        ),
        (
            printk(FMT_7_IR, 0, 0xF0, 0x1F, 0, 0x12, 0x22,
                   "Present field in the IRTE entry is clear"),
            ("intr-remap", 0xF0F8, 0x12 << 48, 0x22, None, None, 0),
        ),
        (
            printk(FMT_5_PASID, "DMA Write", 0, 3, 0, 0xFFFFFFFF, 0x8000000, 5,
                   "PTE Write access is not set"),
            ("dma", 0x18, 0x800_0000, 0x05, None, True, 0),
        ),
        (
            printk(FMT_5_PASID, "DMA Read", 0, 3, 0, 0x2A, 0x8000000, 113, "SM: ..."),
            ("dma", 0x18, 0x800_0000, 0x71, 0x2A, False, 0),
        ),
        (
            printk(FMT_4, "DMA Read", 2, 0, 1, 0x7F000, 6, "PTE Read access is not set"),
            ("dma", 0x201, 0x7F000, 0x06, None, False, 0),
        ),
        (
            printk(FMT_4_IR, 0xF0, 0x1F, 0, 0x10, 34, "Present field in the IRTE entry is clear"),
            ("intr-remap", 0xF0F8, 0x10 << 48, 0x22, None, None, 0),
        ),
        (
            "DMAR: [DMA Write NO_PASID] Request device [0x00:0x03.0] fault addr 0x8000000 "
            "[fault reason 0x05] PTE Write access is not set",
            ("dma", 0x18, 0x800_0000, 0x05, None, True, 0),
        ),
        (
            "DMAR: [DMA Write w/o PASID] Request device [00:03.0] fault addr 8000000 "
            "[fault reason 05h] PTE Write access is not set",
            ("dma", 0x18, 0x800_0000, 0x05, None, True, 0),
        ),
    ],
    ids=["7-no-pasid", "7-pasid", "7-intr", "5-no-pasid", "5-pasid", "4", "4-intr", "5.1x-0x",
         "w/o-pasid"],
)  # fmt: skip
def test_every_kernel_format(line: str, expected: tuple[object, ...]) -> None:
    (fault,) = parse_dmesg_faults(line)
    assert isinstance(fault, DmarFault)
    got = (fault.kind, fault.sid, fault.address, fault.reason, fault.pasid, fault.is_write,
           fault.segment)  # fmt: skip
    assert got == expected


def test_intr_remap_fault_record() -> None:
    (fault,) = dmar_faults(printk(FMT_7_IR, 0, 0, 2, 0, 0x7, 0x25, "Blocked"))
    assert fault.interrupt_index == 7
    record = fault.to_fault_record()
    assert record.interrupt_index == 7 and record.reason == 0x25 and fault.matches(record)


def test_log_prefixes_and_other_lines() -> None:
    text = "\n".join(
        [
            "[    5.120000] DMAR: DRHD: handling fault status reg 2",
            "[    5.123456] " + BRIEF_LINE,
            "[    5.123460] DMAR: Dump dmar0 table entries for IOVA 0x8000000",
            "[    5.123461] DMAR: scalable mode root entry: hi 0x0, low 0x0",
            "Nov 21 15:00:00 guest kernel: " + BRIEF_LINE.replace("0x8000000", "0x9000000"),
            "random noise [DMA Write] not a DMAR line",
            "",
        ]
    )
    faults = dmar_faults(text + "\r\n")
    assert [f.address for f in faults] == [0x800_0000, 0x900_0000]


def test_kernel_source_formats_are_the_ones_tested() -> None:
    if not DMAR_C.is_file():
        pytest.skip(f"kernel source not present: {DMAR_C} (set VIOMMU_KSRC)")
    source = DMAR_C.read_text()
    body = source[source.index("static int dmar_fault_do_one") :]
    body = body[: body.index("\n}\n")]
    formats = [s.removesuffix("\\n") for s in re.findall(r'pr_err\("((?:[^"\\]|\\.)*)"', body)]
    assert formats == [FMT_7_IR, FMT_7_NO_PASID, FMT_7_PASID]


def test_invalid_page_request_lines() -> None:
    req = PageRequest(sid=0x18, address=0xFFFF_8000_0000_0000, pasid=5, is_read=True, lpig=True)
    qw0, qw1 = struct.unpack("<2Q", req.encode())
    text = (
        "IOMMU: dmar0: Address is not canonical\n"
        f"dmar0: Invalid page request: {qw0:08x} {qw1:08x}\n"
        f"dmar1: Invalid page request: {0x2:08x} {0:08x}\n"
    )
    first, second = parse_dmesg_faults(text)
    assert isinstance(first, InvalidPageRequest) and isinstance(second, InvalidPageRequest)
    assert first.kind == "page-request" and first.iommu == "dmar0"
    assert first.problem == "Address is not canonical"
    assert first.request == req and first.sid == 0x18 and first.address == req.address
    assert second.problem is None and second.request is None
    assert second.decode_error is not None and "PageRequest.Type" in second.decode_error


@pytest.mark.parametrize(
    "line",
    [
        "DMAR: [DMA Write PASID 0x0] Request device [0000:00:03.0] fault addr",
        "DMAR: [DMA Write PASID 0x0] Request device [0000:00:23.0] fault addr 0x1000 "
        "[fault reason 0x71] x",
        "DMAR: [DMA Write PASID 0x100000] Request device [0000:00:03.0] fault addr 0x1000 "
        "[fault reason 0x71] x",
        "DMAR: [DMA Write NO_PASID] Request device [0000:00:03.0] fault addr 0x1001 "
        "[fault reason 0x71] x",
        "DMAR: [DMA Write NO_PASID] Request device [0000:00:03.0] fault index 0x1 "
        "[fault reason 0x71] x",
        "DMAR: [INTR-REMAP] Request device [0000:00:03.0] fault index 0x10000 "
        "[fault reason 0x22] x",
        "DMAR: [INTR-REMAP] Request device [0000:00:03.0] fault addr 0x1000 [fault reason 0x22] x",
        "DMAR: [DMA Read NO_PASID] Request device [0000:00:03.0] fault addr 0x1000 "
        "[fault reason 0x100] x",
    ],
    ids=["truncated", "dev>31", "wide-pasid", "unaligned", "dma-index", "wide-index",
         "intr-addr", "wide-reason"],
)  # fmt: skip
def test_malformed_fault_lines_raise_naming_the_line(line: str) -> None:
    with pytest.raises(DecodeError) as info:
        parse_dmesg_faults("ok line\n" + line)
    assert info.value.field == "dmesg line 2"
    assert parse_dmesg_faults("ok line\n" + line, strict=False) == []


def test_no_faults() -> None:
    assert parse_dmesg_faults("") == []
    assert parse_dmesg_faults("DMAR: IOMMU enabled\nDMAR: Host address width 39\n") == []
