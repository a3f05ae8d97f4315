"""The iommufd vEVENTQ: iommufd_vevent_header sequence numbers, LOST_EVENTS, vendor payloads.

Kernel rules (iommufd_private.h ``iommufd_vevent_handler``, driver.c, eventq.c): every event,
delivered or lost, takes the next sequence number, ``(sequence + 1) & INT_MAX``, so 0 follows
INT_MAX.  A lost event is signalled by a header-only record flagged
IOMMU_VEVENTQ_FLAG_LOST_EVENTS carrying the sequence of the last lost event; it is only ever at
the tail and is replaced by the next real event, after which the loss shows only as a gap.
Identifiers in the verdict are sequence numbers: ``missing`` lists gaps with no LOST_EVENTS
header (the kernel's documented way of saying events were lost, but nothing the consumer can
tell apart from a dropped record), ``lost_events`` counts those a LOST_EVENTS header covered.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from harness.errors import DecodeError
from harness.rings._layout import Buffer, compiled
from harness.rings.expect import ExpectedFault, FaultView, match_expected
from harness.rings.payloads import PayloadCheck, SmmuEventCheck
from harness.rings.verdict import Malformed, RingVerdict
from harness.uapi import iommufd as uapi

HEADER = compiled(uapi.iommufd_vevent_header, [("flags", "I"), ("sequence", "I")])
SMMUV3_RECORD_SIZE = ctypes.sizeof(uapi.iommu_vevent_arm_smmuv3)
SEQUENCE_MASK = 0x7FFFFFFF
"""INT_MAX: the kernel's ``veventq->sequence = (veventq->sequence + 1) & INT_MAX``."""

_LOST = int(uapi.IOMMU_VEVENTQ_FLAG_LOST_EVENTS)
_HALF = (SEQUENCE_MASK + 1) // 2
_MAX_LISTED_GAP = 1 << 16


class VEvent(NamedTuple):
    """One record of a vEVENTQ read: header fields and the vendor payload (None when LOST)."""

    offset: int
    flags: int
    sequence: int
    payload: bytes | None

    @property
    def lost_events(self) -> bool:
        return bool(self.flags & _LOST)


def _split(data: bytes, record_size: int) -> tuple[list[VEvent], str | None]:
    records: list[VEvent] = []
    unpack = HEADER.unpack_from
    hsize = HEADER.size
    end = len(data)
    offset = 0
    if record_size < 0:
        return records, f"payload size {record_size} is negative"
    while end - offset >= hsize:
        flags, sequence = unpack(data, offset)
        start = offset + hsize
        if flags & _LOST:
            records.append(VEvent(offset, flags, sequence, None))
            offset = start
            continue
        if end - start < record_size:
            return records, _truncated(offset, record_size, end - start)
        records.append(VEvent(offset, flags, sequence, data[start : start + record_size]))
        offset = start + record_size
    if offset != end:
        return records, _trailing(end - offset)
    return records, None


def _truncated(offset: int, record_size: int, left: int) -> str:
    return f"vEVENT at byte {offset}: header says {record_size}-byte payload, {left} bytes left"


def _trailing(left: int) -> str:
    return f"read buffer: {left} trailing bytes, shorter than a vEVENT header"


def parse_veventq(buf: Buffer, record_size: int = SMMUV3_RECORD_SIZE) -> list[VEvent]:
    """Split one read() of a vEVENTQ fd into records; DecodeError if it ends mid-record."""
    records, problem = _split(bytes(buf), record_size)
    if problem:
        raise DecodeError("iommufd_vevent_header", problem)
    return records


class VEventQChecker:
    """Feed successive read() buffers; sequence state carries across reads.

    With ``ordered`` expectations, a record matching out of the expected order is reported in
    ``out_of_order`` by its sequence number too.

    ``payload`` checks the vendor records (SMMUv3 events by default; ``None`` checks headers
    only); ``first_sequence=0`` for a queue read from its creation, None trusts the first record.
    """

    def __init__(
        self,
        *,
        payload: PayloadCheck | None = None,
        strict: bool = True,
        expected: Sequence[ExpectedFault] = (),
        ordered: bool = False,
        first_sequence: int | None = None,
        record_size: int | None = None,
    ) -> None:
        self.payload: PayloadCheck | None = (
            payload
            if payload is not None or record_size is not None
            else SmmuEventCheck(strict=strict)
        )
        self.record_size = self.payload.size if self.payload is not None else record_size or 0
        self.expected = tuple(expected)
        self.ordered = ordered
        self.next_sequence = first_sequence
        self.records = 0
        self.lost_events = 0
        self.lost_headers = 0
        self.seen: set[int] = set()
        self.missing: dict[int, None] = {}
        self.duplicated: list[int] = []
        self.out_of_order: list[int] = []
        self.malformed: list[Malformed] = []
        self.notes: list[str] = []
        self.views: list[FaultView] = []
        self.sequence_at: dict[int, int] = {}

    def feed(self, data: Buffer | Iterable[VEvent]) -> None:
        """Check one read() buffer, or records already split by :func:`parse_veventq`."""
        if isinstance(data, bytes | bytearray | memoryview):
            self._feed_buffer(bytes(data))
            return
        for record in data:
            payload = record.payload
            if payload is not None and len(payload) < self.record_size:
                problem = _truncated(record.offset, self.record_size, len(payload))
                self.malformed.append(Malformed(self.records, problem))
                self.records += 1
                continue
            self._record(record.flags, record.sequence, payload, 0)

    def _feed_buffer(self, data: bytes) -> None:
        unpack = HEADER.unpack_from
        hsize = HEADER.size
        size = self.record_size
        end = len(data)
        offset = 0
        while end - offset >= hsize:
            flags, sequence = unpack(data, offset)
            offset += hsize
            if flags & _LOST:
                self._record(flags, sequence, None, 0)
                continue
            if end - offset < size:
                self.malformed.append(
                    Malformed(self.records, _truncated(offset - hsize, size, end - offset))
                )
                return
            self._record(flags, sequence, data, offset)
            offset += size
        if offset != end:
            self.malformed.append(Malformed(self.records, _trailing(end - offset)))

    def _record(self, flags: int, sequence: int, buf: bytes | None, offset: int) -> None:
        position = self.records
        self.records = position + 1
        if flags & ~_LOST or sequence > SEQUENCE_MASK:
            self.malformed.append(Malformed(position, _header_problem(flags, sequence)))
            return
        expected = self.next_sequence
        if expected is None:
            expected = sequence
        delta = (sequence - expected) & SEQUENCE_MASK
        lost = flags & _LOST
        if delta:
            self._irregular(sequence, expected, delta, bool(lost))
        else:
            self.seen.add(sequence)
            self.next_sequence = (sequence + 1) & SEQUENCE_MASK
            if lost:
                self.lost_events += 1
                self.lost_headers += 1
        check = self.payload
        if lost or buf is None or check is None:
            return
        problem = check.problem_at(buf, offset)
        if problem is not None:
            self.malformed.append(Malformed(position, problem))
        elif self.expected:
            self.views.append(check.view(position, buf[offset : offset + check.size]))
            self.sequence_at[position] = sequence

    def _irregular(self, sequence: int, expected: int, delta: int, lost: bool) -> None:
        if delta >= _HALF:
            if sequence in self.missing:
                del self.missing[sequence]
                self.out_of_order.append(sequence)
            elif sequence in self.seen:
                self.duplicated.append(sequence)
            else:
                self.out_of_order.append(sequence)
            self.seen.add(sequence)
            return
        if lost:
            self.lost_events += delta + 1
            self.lost_headers += 1
        else:
            listed = min(delta, _MAX_LISTED_GAP)
            for missing in range(expected, expected + listed):
                self.missing[missing & SEQUENCE_MASK] = None
            if listed < delta:
                self.notes.append(
                    f"gap of {delta} before sequence {sequence}: first {listed} listed"
                )
        self.seen.add(sequence)
        self.next_sequence = (sequence + 1) & SEQUENCE_MASK

    def verdict(self) -> RingVerdict:
        """Everything found so far."""
        matches = match_expected(self.views, self.expected, ordered=self.ordered)
        return RingVerdict(
            ring="veventq",
            records_seen=self.records,
            missing=tuple(self.missing),
            duplicated=tuple(self.duplicated),
            out_of_order=(
                *self.out_of_order,
                *(self.sequence_at[position] for position in matches.out_of_order),
            ),
            malformed=tuple(self.malformed),
            overflow_signalled=self.lost_headers > 0,
            lost_events=self.lost_events,
            matched=matches.matched,
            unmatched_expected=matches.unmatched_expected,
            unexpected=matches.unexpected if self.expected else (),
            notes=tuple(self.notes),
        )


def _header_problem(flags: int, sequence: int) -> str:
    if flags & ~_LOST:
        return f"iommufd_vevent_header.flags: unknown bits {flags & ~_LOST:#x}"
    return f"iommufd_vevent_header.sequence: {sequence:#x} beyond INT_MAX"


def check_veventq(
    data: Buffer | Iterable[VEvent],
    expected: Sequence[ExpectedFault] = (),
    *,
    payload: PayloadCheck | None = None,
    strict: bool = True,
    ordered: bool = False,
    first_sequence: int | None = None,
    record_size: int | None = None,
) -> RingVerdict:
    """Check one read() buffer of a vEVENTQ (SMMUv3 payloads unless told otherwise)."""
    checker = VEventQChecker(
        payload=payload,
        strict=strict,
        expected=expected,
        ordered=ordered,
        first_sequence=first_sequence,
        record_size=record_size,
    )
    checker.feed(data)
    return checker.verdict()


def encode_vevent(sequence: int, payload: bytes = b"", *, lost: bool = False) -> bytes:
    """Bytes of one vEVENT as the kernel's read() lays it out (header-only when ``lost``)."""
    header = HEADER.pack(_LOST if lost else 0, sequence & SEQUENCE_MASK)
    return header if lost else header + payload
