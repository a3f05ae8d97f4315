"""Parse the Intel IOMMU driver's fault reports out of a guest's kernel log.

DMA and interrupt-remapping faults come from ``dmar_fault_do_one`` (dmar.c, prefix
``DMAR: ``). Every format mainline kernels have used since 4.x is accepted:

- 6.x/7.x: ``[DMA Write PASID 0x0] Request device [0000:00:03.0] fault addr 0x8000000
  [fault reason 0x71] <name>``, ``[DMA Read NO_PASID] ...`` and
  ``[INTR-REMAP] Request device [0000:00:02.0] fault index 0x12 [fault reason 0x22] <name>``;
- 5.1x: the same without the PCI segment (device ``[00:03.0]`` or ``[0x00:0x03.0]``);
- 5.x: ``[DMA Write] Request device [00:03.0] PASID ffffffff fault addr 8000000
  [fault reason 05] <name>`` (hex address, decimal reason, PASID ffffffff = none);
- 4.x: as 5.x without ``PASID``.

Page requests the driver rejects (prq.c) are logged as ``<iommu>: Invalid page request:
<qw0> <qw1>``, usually after a line naming the problem (``IOMMU: dmar0: Address is not
canonical``); those become ``InvalidPageRequest`` entries carrying the decoded request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from harness.errors import DecodeError
from harness.vtd._bits import RequesterId, format_bdf
from harness.vtd.faults import FaultRecord
from harness.vtd.prq import PageRequest

_FAULT = re.compile(
    r"DMAR: \[(?P<type>DMA Read|DMA Write|INTR-REMAP)"
    r"(?: (?:(?P<nopasid>NO_PASID|w/o PASID)|PASID (?P<pasid>(?:0x)?[0-9a-fA-F]+)))?\]"
    r" Request device \[(?:(?P<seg>[0-9a-fA-F]{4}):)?"
    r"(?:0x)?(?P<bus>[0-9a-fA-F]{2}):(?:0x)?(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])\]"
    r"(?: PASID (?P<oldpasid>[0-9a-fA-F]+))?"
    r" fault (?P<what>addr|index) (?P<addr>(?:0x)?[0-9a-fA-F]+)"
    r" \[fault reason (?P<reason>0x[0-9a-fA-F]+|[0-9a-fA-F]+h|[0-9]+)\]"
    r"(?: (?P<text>.*?))?\s*$"
)
_FAULT_START = re.compile(r"DMAR: \[(?:DMA Read|DMA Write|INTR-REMAP)")
_BAD_PRQ = re.compile(
    r"(?:DMAR: )?(?P<iommu>[\w.-]+): Invalid page request: "
    r"(?P<qw0>[0-9a-fA-F]+) (?P<qw1>[0-9a-fA-F]+)\s*$"
)
_PRQ_PROBLEM = re.compile(
    r"IOMMU: (?P<iommu>[\w.-]+): (?P<problem>Address is not canonical"
    r"|Page request in Privilege Mode|Execution request not supported)\s*$"
)
_NO_PASID_OLD = 0xFFFFFFFF
_PASID_MAX = (1 << 20) - 1


@dataclass(frozen=True)
class DmarFault(RequesterId):
    """One DMA or interrupt-remapping fault as the kernel reported it."""

    kind: str
    sid: int
    address: int
    reason: int
    reason_name: str
    pasid: int | None
    is_write: bool | None
    segment: int = 0
    line: str = ""

    @property
    def bdf(self) -> str:
        """``0000:00:03.0``."""
        return format_bdf(self.sid, self.segment)

    @property
    def interrupt_index(self) -> int:
        """For an ``intr-remap`` fault, the interrupt index the kernel printed."""
        return self.address >> 48

    def to_fault_record(self) -> FaultRecord:
        """The fault record the kernel read (IR faults are recorded as writes)."""
        return FaultRecord(
            sid=self.sid,
            address=self.address,
            reason=self.reason,
            pasid=self.pasid,
            t1=self.is_write is False,
        )

    def matches(self, record: FaultRecord) -> bool:
        """Whether ``record`` is the fault this line reports."""
        return (
            record.sid == self.sid
            and record.address == self.address
            and record.reason == self.reason
            and record.pasid == self.pasid
            and (self.is_write is None or record.is_write == self.is_write)
        )


@dataclass(frozen=True)
class InvalidPageRequest:
    """A page request the driver answered as invalid (prq.c ``handle_bad_prq_event``)."""

    iommu: str
    qw0: int
    qw1: int
    request: PageRequest | None
    problem: str | None = None
    decode_error: str | None = None
    line: str = ""

    kind: ClassVar[str] = "page-request"

    @property
    def sid(self) -> int:
        return (self.qw0 >> 16) & 0xFFFF

    @property
    def address(self) -> int:
        return self.qw1 & ~0xFFF & ((1 << 64) - 1)


def _hex(text: str) -> int:
    return int(text, 16)


def _reason(text: str) -> int:
    if text.startswith("0x"):
        return int(text, 16)
    if text.endswith("h"):
        return int(text[:-1], 16)
    return int(text, 10)


def _fault(match: re.Match[str], line: str, number: int) -> DmarFault:
    where = f"dmesg line {number}"
    kind = "intr-remap" if match["type"] == "INTR-REMAP" else "dma"
    if (kind == "intr-remap") != (match["what"] == "index"):
        raise DecodeError(where, f"'fault {match['what']}' does not fit a {match['type']} fault")
    dev = _hex(match["dev"])
    if dev > 0x1F:
        raise DecodeError(where, f"PCI device number {dev:#x} above 0x1f")
    sid = _hex(match["bus"]) << 8 | dev << 3 | int(match["fn"])
    pasid: int | None = None
    raw_pasid = match["pasid"] or match["oldpasid"]
    if raw_pasid is not None:
        pasid = _hex(raw_pasid)
        if match["oldpasid"] is not None and pasid == _NO_PASID_OLD:
            pasid = None
        elif pasid > _PASID_MAX:
            raise DecodeError(where, f"PASID {pasid:#x} is wider than 20 bits")
    value = _hex(match["addr"])
    reason = _reason(match["reason"])
    if reason > 0xFF:
        raise DecodeError(where, f"fault reason {reason:#x} is wider than 8 bits")
    if kind == "intr-remap":
        if value > 0xFFFF:
            raise DecodeError(where, f"interrupt index {value:#x} is wider than 16 bits")
        address = value << 48
    else:
        if value >> 64 or value & 0xFFF:
            raise DecodeError(where, f"fault address {value:#x} is not a 64-bit page address")
        address = value
    return DmarFault(
        kind=kind,
        sid=sid,
        address=address,
        reason=reason,
        reason_name=match["text"] or "",
        pasid=pasid,
        is_write=None if kind == "intr-remap" else match["type"] == "DMA Write",
        segment=_hex(match["seg"]) if match["seg"] else 0,
        line=line,
    )


def _bad_prq(match: re.Match[str], line: str, problem: str | None) -> InvalidPageRequest:
    qw0, qw1 = _hex(match["qw0"]), _hex(match["qw1"])
    if qw0 >> 64 or qw1 >> 64:
        raise DecodeError("dmesg page request", f"qword wider than 64 bits in {line!r}")
    request: PageRequest | None = None
    error: str | None = None
    try:
        request = PageRequest.from_words([qw0, qw1])
    except DecodeError as exc:
        error = str(exc)
    return InvalidPageRequest(
        iommu=match["iommu"],
        qw0=qw0,
        qw1=qw1,
        request=request,
        problem=problem,
        decode_error=error,
        line=line,
    )


def parse_dmesg_faults(text: str, *, strict: bool = True) -> list[DmarFault | InvalidPageRequest]:
    """Every DMAR fault and invalid page request in ``text``, in log order.

    A line that starts like a DMAR fault report but does not parse raises ``DecodeError``
    naming its line number; ``strict=False`` skips it instead (e.g. a truncated console).
    """
    out: list[DmarFault | InvalidPageRequest] = []
    problems: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fault = _FAULT.search(line)
        if fault is not None:
            try:
                out.append(_fault(fault, line, number))
            except DecodeError:
                if strict:
                    raise
            continue
        if _FAULT_START.search(line):
            if strict:
                raise DecodeError(f"dmesg line {number}", f"unrecognised DMAR fault: {line!r}")
            continue
        problem = _PRQ_PROBLEM.search(line)
        if problem is not None:
            problems[problem["iommu"]] = problem["problem"]
            continue
        bad = _BAD_PRQ.search(line)
        if bad is not None:
            out.append(_bad_prq(bad, line, problems.pop(bad["iommu"], None)))
    return out


def dmar_faults(text: str) -> list[DmarFault]:
    """Only the DMA / interrupt-remapping faults of ``text``."""
    return [f for f in parse_dmesg_faults(text) if isinstance(f, DmarFault)]
