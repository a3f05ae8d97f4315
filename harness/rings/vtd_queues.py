"""VT-d fault reporting as the guest sees it: fault-recording registers and the page request queue.

Fault recording (VT-d spec 7.2.1, kernel ``dmar_fault``): NFR 128-bit records used as a ring;
hardware records at its current index unless that record's F bit is still set, in which case
the fault is dropped and FSTS.PFO set.  FSTS.PPF says some F is set and FSTS.FRI names the
record software starts at; software walks forward from FRI, wrapping, while F is set, clearing
each.  Positions in the verdict follow that walk; ``missing`` lists register indices whose F is
set but which the walk from FRI never reaches.

Page request queue (VT-d spec 7.5.1, kernel ``prq_event_thread``): PQH/PQT hold byte offsets
of 32-byte descriptors in a 2^PQS x 4 KiB queue, software consumes from PQH to PQT; hardware
keeps one slot empty and sets PRS.PRO when it drops a request on a full queue.  Positions
count descriptors from PQH; ``duplicated`` lists positions of requests reusing the
(RID, PASID, PRGI) of a group already completed in the same snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.rings._layout import Buffer
from harness.rings._vtd_fast import QWORDS, FastRecord, FieldBits
from harness.rings.expect import ExpectedFault, FaultView, match_expected
from harness.rings.groups import GroupTracker
from harness.rings.verdict import Malformed, RingVerdict
from harness.vtd.faults import FaultRecord
from harness.vtd.prq import PageRequest

FRCD_SIZE = 16
DMA_FSTS_PFO = 1 << 0
DMA_FSTS_PPF = 1 << 1
FSTS_FRI_SHIFT = 8
FSTS_FRI_MASK = 0xFF
DMA_PRS_PPR = 1 << 0
DMA_PRS_PRO = 1 << 1
PRQ_ENTRY_SIZE = 32
PRQ_PAGE = 4096
_F_BYTE = FRCD_SIZE - 1
_F_BIT = 0x80
FAULT_RECORD_CHECK = FastRecord(FaultRecord, FRCD_SIZE, forbidden={"at": 3})
PAGE_REQUEST_CHECK = FastRecord(PageRequest, PRQ_ENTRY_SIZE)
_PRQ_SID, _PRQ_PP, _PRQ_PASID, _PRQ_PRGI, _PRQ_LPIG, _PRQ_READ, _PRQ_WRITE = (
    FieldBits(PageRequest.LAYOUT, attr)
    for attr in ("sid", "pasid_present", "pasid_value", "prgi", "lpig", "is_read", "is_write")
)


def fault_record_view(position: int, record: FaultRecord) -> FaultView:
    """What expectations can test in a decoded fault record."""
    return FaultView(
        position,
        sid=record.sid,
        pasid=record.pasid,
        address=record.address,
        reason=record.reason,
        reason_name=record.reason_name,
        is_write=record.is_write,
    )


def page_request_view(position: int, request: PageRequest) -> FaultView:
    """What expectations can test in a decoded page request descriptor."""
    return FaultView(
        position,
        sid=request.sid,
        pasid=request.pasid,
        address=request.address,
        is_write=request.is_write,
    )


def _fri_walk(data: bytes, nfr: int, fri: int) -> list[int]:
    walk = []
    index = fri
    for _ in range(nfr):
        if not data[index * FRCD_SIZE + _F_BYTE] & _F_BIT:
            break
        walk.append(index)
        index = index + 1 if index + 1 < nfr else 0
    return walk


def check_fault_recording(
    frcd: Buffer,
    fsts: int,
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = False,
) -> RingVerdict:
    """Check the NFR fault-recording registers (``frcd``, 16 bytes each) against FSTS."""
    overflow = bool(fsts & DMA_FSTS_PFO)
    nfr, rest = divmod(len(frcd), FRCD_SIZE)
    if rest or not 1 <= nfr <= 256:
        bad_size = f"{len(frcd)} bytes is not 1..256 records of {FRCD_SIZE} bytes"
        return RingVerdict(
            "vtd-fault-recording",
            malformed=(Malformed(None, f"FRCD_REG: {bad_size}"),),
            overflow_signalled=overflow,
        )
    data = bytes(frcd)
    malformed: list[Malformed] = []
    pending = [i for i in range(nfr) if data[i * FRCD_SIZE + _F_BYTE] & _F_BIT]
    fri = (fsts >> FSTS_FRI_SHIFT) & FSTS_FRI_MASK
    walk: list[int] = []
    if fsts & DMA_FSTS_PPF:
        if fri >= nfr:
            malformed.append(Malformed(None, f"FSTS.FRI: {fri} >= NFR {nfr}"))
        elif not pending:
            malformed.append(Malformed(None, "FSTS.PPF: set but no record has F set"))
        else:
            walk = _fri_walk(data, nfr, fri)
            if not walk:
                malformed.append(Malformed(None, f"FSTS.FRI: record {fri} has F clear"))
    elif pending:
        malformed.append(
            Malformed(None, f"FSTS.PPF: clear while {len(pending)} records have F set")
        )
    reached = set(walk)
    views: list[FaultView] = []
    for position, index in enumerate(walk):
        start = index * FRCD_SIZE
        problem = FAULT_RECORD_CHECK.problem(data, start)
        if problem is not None:
            malformed.append(Malformed(position, f"FRCD[{index}]: {problem}"))
        elif expected:
            record = FaultRecord.decode(data[start : start + FRCD_SIZE])
            views.append(fault_record_view(position, record))
    matches = match_expected(views, expected, ordered=ordered)
    return RingVerdict(
        ring="vtd-fault-recording",
        records_seen=len(walk),
        missing=tuple(i for i in pending if i not in reached),
        out_of_order=matches.out_of_order,
        malformed=tuple(malformed),
        overflow_signalled=overflow,
        matched=matches.matched,
        unmatched_expected=matches.unmatched_expected,
        unexpected=matches.unexpected if expected else (),
    )


class VtdFaultRecorder:
    """Fault-recording registers written as VT-d hardware writes them, serviced like dmar_fault."""

    def __init__(self, nfr: int) -> None:
        if not 1 <= nfr <= 256:
            raise ValueError(f"NFR {nfr} outside 1..256")
        self.nfr = nfr
        self.frcd = bytearray(FRCD_SIZE * nfr)
        self.fsts = 0
        self.next_index = 0
        self.dropped = 0

    def _f(self, index: int) -> bool:
        return bool(self.frcd[index * FRCD_SIZE + _F_BYTE] & _F_BIT)

    def record(self, record: FaultRecord | Buffer) -> bool:
        """Hardware side: log at the current index, or drop and set PFO when its F is still set."""
        index = self.next_index
        if self._f(index):
            self.fsts |= DMA_FSTS_PFO
            self.dropped += 1
            return False
        data = bytearray(record.encode() if isinstance(record, FaultRecord) else record)
        data[_F_BYTE] |= _F_BIT
        self.frcd[index * FRCD_SIZE : (index + 1) * FRCD_SIZE] = data
        if not self.fsts & DMA_FSTS_PPF:
            self.fsts = self.fsts & ~(FSTS_FRI_MASK << FSTS_FRI_SHIFT) | DMA_FSTS_PPF
            self.fsts |= index << FSTS_FRI_SHIFT
        self.next_index = (index + 1) % self.nfr
        return True

    def service(self) -> list[bytes]:
        """Software side: walk from FRI clearing F, then clear PFO; PPF drops with the last F."""
        taken = []
        if self.fsts & DMA_FSTS_PPF:
            fri = (self.fsts >> FSTS_FRI_SHIFT) & FSTS_FRI_MASK
            for index in _fri_walk(bytes(self.frcd), self.nfr, fri):
                start = index * FRCD_SIZE
                taken.append(bytes(self.frcd[start : start + FRCD_SIZE]))
                self.frcd[start + _F_BYTE] &= ~_F_BIT & 0xFF
        self.fsts &= ~DMA_FSTS_PFO
        if not any(self._f(i) for i in range(self.nfr)):
            self.fsts &= ~DMA_FSTS_PPF
        return taken


def _queue_problem(size: int) -> str | None:
    pages, rest = divmod(size, PRQ_PAGE)
    if rest or pages == 0 or pages & (pages - 1):
        return f"DMAR_PQA_REG: a {size}-byte queue is not 2^PQS x 4 KiB"
    return None


def _offset_problem(name: str, value: int, size: int) -> str | None:
    if value % PRQ_ENTRY_SIZE:
        return f"DMAR_{name}_REG: {value:#x} is not {PRQ_ENTRY_SIZE}-byte aligned"
    if not 0 <= value < size:
        return f"DMAR_{name}_REG: {value:#x} is beyond the {size:#x}-byte queue"
    return None


def check_page_request_queue(
    queue: Buffer,
    pqh: int,
    pqt: int,
    prs: int = 0,
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = False,
) -> RingVerdict:
    """Consume PQH to PQT as ``prq_event_thread`` would, and report everything wrong."""
    overflow = bool(prs & DMA_PRS_PRO)
    size = len(queue)
    header = [_queue_problem(size)]
    if header[0] is None:
        header = [_offset_problem("PQH", pqh, size), _offset_problem("PQT", pqt, size)]
    problems = [Malformed(None, text) for text in header if text]
    if problems:
        return RingVerdict("vtd-prq", malformed=tuple(problems), overflow_signalled=overflow)
    slots = size // PRQ_ENTRY_SIZE
    count = (pqt - pqh) % size // PRQ_ENTRY_SIZE
    notes = []
    if count == slots - 1:
        notes.append(
            f"queue full ({count} of {slots} slots, one kept empty): next request sets PRO"
        )
    data = bytes(queue)
    malformed: list[Malformed] = []
    groups = GroupTracker()
    duplicated: list[int] = []
    views: list[FaultView] = []
    stop_markers = 0
    offset = pqh
    for position in range(count):
        w0, w1 = QWORDS.unpack_from(data, offset)
        problem = (
            None
            if PAGE_REQUEST_CHECK.looks_valid(w0, w1)
            else PAGE_REQUEST_CHECK.problem(data, offset)
        )
        if problem is not None:
            malformed.append(Malformed(position, f"PRQ[{offset // PRQ_ENTRY_SIZE}]: {problem}"))
        elif _PRQ_LPIG.get(w0, w1) and not (_PRQ_READ.get(w0, w1) or _PRQ_WRITE.get(w0, w1)):
            stop_markers += 1
        else:
            pasid = _PRQ_PASID.get(w0, w1) if _PRQ_PP.get(w0, w1) else None
            key = (_PRQ_SID.get(w0, w1), pasid, _PRQ_PRGI.get(w0, w1))
            if not groups.fault(key, bool(_PRQ_LPIG.get(w0, w1)), position):
                duplicated.append(position)
            if expected:
                request = PageRequest.decode(data[offset : offset + PRQ_ENTRY_SIZE])
                views.append(page_request_view(position, request))
        offset = (offset + PRQ_ENTRY_SIZE) % size
    if stop_markers:
        notes.append(f"{stop_markers} stop markers (no response needed) skipped")
    matches = match_expected(views, expected, ordered=ordered)
    return RingVerdict(
        ring="vtd-prq",
        records_seen=count,
        duplicated=tuple(duplicated),
        out_of_order=matches.out_of_order,
        malformed=tuple(malformed),
        overflow_signalled=overflow,
        matched=matches.matched,
        unmatched_expected=matches.unmatched_expected,
        unexpected=matches.unexpected if expected else (),
        groups_without_last_page=tuple(groups.open),
        notes=tuple(notes),
    )


class VtdPageRequestQueue:
    """A page request queue filled as VT-d hardware fills it, drained like prq_event_thread."""

    def __init__(self, pages: int = 1) -> None:
        if pages <= 0 or pages & (pages - 1):
            raise ValueError(f"{pages} pages is not a power of two")
        self.memory = bytearray(PRQ_PAGE * pages)
        self.pqh = 0
        self.pqt = 0
        self.prs = 0
        self.dropped = 0

    def produce(self, request: PageRequest | Buffer) -> bool:
        """Hardware side: queue at PQT, or drop and set PRS.PRO when only the empty slot is left."""
        size = len(self.memory)
        if (self.pqt + PRQ_ENTRY_SIZE) % size == self.pqh:
            self.prs |= DMA_PRS_PRO
            self.dropped += 1
            return False
        data = request.encode() if isinstance(request, PageRequest) else bytes(request)
        self.memory[self.pqt : self.pqt + PRQ_ENTRY_SIZE] = data.ljust(PRQ_ENTRY_SIZE, b"\0")
        self.pqt = (self.pqt + PRQ_ENTRY_SIZE) % size
        self.prs |= DMA_PRS_PPR
        return True

    def consume(self) -> list[bytes]:
        """Software side: take PQH..PQT, set PQH = PQT, clear PRO once the queue is empty."""
        taken = []
        size = len(self.memory)
        while self.pqh != self.pqt:
            taken.append(bytes(self.memory[self.pqh : self.pqh + PRQ_ENTRY_SIZE]))
            self.pqh = (self.pqh + PRQ_ENTRY_SIZE) % size
        self.prs &= ~(DMA_PRS_PRO | DMA_PRS_PPR)
        return taken

    def check(
        self, expected: Sequence[ExpectedFault] = (), *, ordered: bool = False
    ) -> RingVerdict:
        """The checker's verdict on the queue as it stands."""
        return check_page_request_queue(
            self.memory, self.pqh, self.pqt, self.prs, expected, ordered=ordered
        )
