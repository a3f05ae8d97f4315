"""The legacy VFIO DMA fault region and fault-response region of seed 000.

Seed 000 fixes the layout: a header (fault ring: ``tail, entry_size, nb_entries, offset,
head``; response ring: ``head, entry_size, nb_entries, offset, tail``) and ``nb_entries``
records of ``entry_size`` bytes at ``offset``.  The producer writes ``head`` (the kernel for
faults, userspace for responses), the consumer writes ``tail``; indices are ring-relative and
wrap modulo ``nb_entries``.  The seed does not say when the ring is full: the vendor kernel
that implemented it (vfio_pci_iommu_dev_fault_handler) refuses a fault with -ENOSPC when
``CIRC_SPACE(head, tail, nb_entries) < 1``, i.e. one slot is always kept empty and
``head == tail`` means empty; the dropped fault is not signalled in the region.  Positions in
the verdict count records in consumption order; ``duplicated`` lists positions of page requests
that re-open a group still awaiting its response.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from harness.errors import DecodeError
from harness.rings._layout import Buffer, compiled
from harness.rings.expect import ExpectedFault, FaultView, match_expected
from harness.rings.groups import GroupTracker
from harness.rings.verdict import GroupKey, Malformed, RingVerdict
from harness.uapi import legacy as uapi
from harness.uapi._struct import UapiStruct

FAULT_HEADER = compiled(
    uapi.vfio_region_dma_fault,
    [("tail", "I"), ("entry_size", "I"), ("nb_entries", "I"), ("offset", "I"), ("head", "I")],
)
RESPONSE_HEADER = compiled(
    uapi.vfio_region_dma_fault_response,
    [("head", "I"), ("entry_size", "I"), ("nb_entries", "I"), ("offset", "I"), ("tail", "I")],
)
_FAULT_SIZE = compiled(uapi.iommu_fault, [("type", "I"), ("padding", "I"), ("_u", "56x")]).size
_PRM_LAYOUT = compiled(
    uapi.iommu_fault_page_request,
    [("flags", "I"), ("pasid", "I"), ("grpid", "I"), ("perm", "I"), ("addr", "Q"), ("", "16x")],
)
_UNRECOV_LAYOUT = compiled(
    uapi.iommu_fault_unrecoverable,
    [("reason", "I"), ("flags", "I"), ("pasid", "I"), ("perm", "I"), ("addr", "Q"), ("", "8x")],
)
FAULT_FIELDS = struct.Struct("<IIIIIIQ")
"""type, padding, then the union's first four u32 and the u64 at offset 24 (both variants)."""
RESPONSE = compiled(
    uapi.iommu_page_response,
    [
        ("argsz", "I"),
        ("version", "I"),
        ("flags", "I"),
        ("pasid", "I"),
        ("grpid", "I"),
        ("code", "I"),
    ],
)
_UNRECOV_TYPE = int(uapi.IOMMU_FAULT_DMA_UNRECOV)
_PAGE_REQ_TYPE = int(uapi.IOMMU_FAULT_PAGE_REQ)
_PRM_PASID_VALID = int(uapi.IOMMU_FAULT_PAGE_REQUEST_PASID_VALID)
_PRM_LAST = int(uapi.IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE)
_PRM_KNOWN = 0xF
_UNRECOV_PASID_VALID = int(uapi.IOMMU_FAULT_UNRECOV_PASID_VALID)
_UNRECOV_ADDR_VALID = int(uapi.IOMMU_FAULT_UNRECOV_ADDR_VALID)
_UNRECOV_KNOWN = 0x7
_PERM_KNOWN = 0xF
_WRITE = int(uapi.IOMMU_FAULT_PERM_WRITE)
_MAX_REASON = int(uapi.IOMMU_FAULT_REASON_OOR_ADDRESS)
_REASON_NAMES = {int(r): r.name for r in uapi.iommu_fault_reason}
_RESP_PASID_VALID = int(uapi.IOMMU_PAGE_RESP_PASID_VALID)
_RESP_VERSION = int(uapi.IOMMU_PAGE_RESP_VERSION_1)
_MAX_CODE = int(max(uapi.iommu_page_response_code))


class RingKind(NamedTuple):
    """Which of the two rings: header layout, which header slots are head/tail, record size."""

    name: str
    header: struct.Struct
    head_slot: int
    tail_slot: int
    entry_size: int


FAULT_RING = RingKind("vfio_region_dma_fault", FAULT_HEADER, 4, 0, _FAULT_SIZE)
RESPONSE_RING = RingKind("vfio_region_dma_fault_response", RESPONSE_HEADER, 0, 4, RESPONSE.size)


class RingHeader(NamedTuple):
    """A ring header with the fields named by role, whatever their order in the region."""

    head: int
    tail: int
    entry_size: int
    nb_entries: int
    offset: int


def read_header(region: Buffer, kind: RingKind) -> RingHeader:
    """Decode and validate a ring header against the region; DecodeError names the bad field."""
    if len(region) < kind.header.size:
        raise DecodeError(kind.name, f"need {kind.header.size} bytes, got {len(region)}")
    values = kind.header.unpack_from(region)
    header = RingHeader(values[kind.head_slot], values[kind.tail_slot], *values[1:4])
    name = kind.name
    if header.nb_entries == 0:
        raise DecodeError(f"{name}.nb_entries", "ring has no entries")
    if header.entry_size < kind.entry_size:
        raise DecodeError(
            f"{name}.entry_size",
            f"{header.entry_size} is smaller than the {kind.entry_size}-byte record",
        )
    if header.offset < kind.header.size:
        raise DecodeError(f"{name}.offset", f"{header.offset:#x} overlaps the ring header")
    end = header.offset + header.nb_entries * header.entry_size
    if end > len(region):
        raise DecodeError(
            f"{name}.offset",
            f"{header.nb_entries} entries of {header.entry_size} bytes at {header.offset:#x} "
            f"end at {end:#x}, past the {len(region):#x}-byte region",
        )
    for role in ("head", "tail"):
        value = getattr(header, role)
        if value >= header.nb_entries:
            raise DecodeError(f"{name}.{role}", f"{value} >= nb_entries {header.nb_entries}")
    return header


def pending_entries(region: Buffer, kind: RingKind) -> tuple[RingHeader, list[bytes]]:
    """The header and the raw records from ``tail`` up to ``head`` (DecodeError on a bad header)."""
    header = read_header(region, kind)
    data = bytes(region)
    size, nb, base = header.entry_size, header.nb_entries, header.offset
    count = (header.head - header.tail) % nb
    entries = []
    index = header.tail
    for _ in range(count):
        start = base + index * size
        entries.append(data[start : start + size])
        index = index + 1 if index + 1 < nb else 0
    return header, entries


class LegacyRing:
    """A ring in a region bytearray: the producer and consumer models tests and tier 0 use."""

    def __init__(self, region: bytearray, kind: RingKind) -> None:
        self.region = region
        self.kind = kind

    @classmethod
    def create(
        cls,
        kind: RingKind,
        nb_entries: int,
        *,
        offset: int = 4096,
        entry_size: int | None = None,
        region_size: int | None = None,
    ) -> LegacyRing:
        """A zeroed region with the header the kernel writes at init (head = tail = 0)."""
        size = kind.entry_size if entry_size is None else entry_size
        end = offset + nb_entries * size
        region = bytearray(max(end, region_size or 0))
        values = [0, size, nb_entries, offset, 0]
        kind.header.pack_into(region, 0, *values)
        return cls(region, kind)

    def header(self) -> RingHeader:
        """The validated header (DecodeError if it is corrupt)."""
        return read_header(self.region, self.kind)

    def _set(self, slot: int, value: int) -> None:
        struct.pack_into("<I", self.region, slot * 4, value)

    def space(self) -> int:
        """Free slots for the producer: CIRC_SPACE, one slot always kept empty."""
        header = self.header()
        return (header.tail - header.head - 1) % header.nb_entries

    def produce(self, entry: Buffer | UapiStruct) -> bool:
        """Producer side: copy ``entry`` at ``head`` and advance it; False when full (-ENOSPC)."""
        header = self.header()
        if (header.tail - header.head - 1) % header.nb_entries < 1:
            return False
        data = bytes(entry)
        start = header.offset + header.head * header.entry_size
        self.region[start : start + header.entry_size] = data[: header.entry_size].ljust(
            header.entry_size, b"\0"
        )
        self._set(self.kind.head_slot, (header.head + 1) % header.nb_entries)
        return True

    def consume(self) -> list[bytes]:
        """Consumer side: take every record from ``tail`` to ``head`` and move ``tail`` up."""
        header, entries = pending_entries(self.region, self.kind)
        self._set(self.kind.tail_slot, header.head)
        return entries


def _prm_key(flags: int, pasid: int, grpid: int) -> GroupKey:
    return (pasid if flags & _PRM_PASID_VALID else None, grpid)


class LegacyRingChecker:
    """Checks faults (and the responses written for them) of one device's legacy rings.

    Feed regions (their pending records, tail to head) or records already consumed, in the
    order they happened; the verdict covers everything fed.
    """

    def __init__(self, expected: Sequence[ExpectedFault] = (), *, ordered: bool = False) -> None:
        self.expected = tuple(expected)
        self.ordered = ordered
        self.groups = GroupTracker()
        self.records = 0
        self.responses = 0
        self.responses_fed = False
        self.duplicated: list[int] = []
        self.malformed: list[Malformed] = []
        self.notes: list[str] = []
        self.views: list[FaultView] = []

    def feed_fault_region(self, region: Buffer) -> None:
        """Check the fault region's header and every record pending in it."""
        entries = self._pending(region, FAULT_RING)
        if entries is not None:
            self.feed_faults(entries)

    def feed_response_region(self, region: Buffer) -> None:
        """Check the response region's header and every response pending in it."""
        entries = self._pending(region, RESPONSE_RING)
        if entries is not None:
            self.feed_responses(entries)
        self.responses_fed = True

    def _pending(self, region: Buffer, kind: RingKind) -> list[bytes] | None:
        try:
            header, entries = pending_entries(region, kind)
        except DecodeError as error:
            self.malformed.append(Malformed(None, str(error)))
            return None
        if header.entry_size != kind.entry_size:
            self.notes.append(
                f"{kind.name}.entry_size {header.entry_size} > {kind.entry_size}: "
                "records read from the start of each slot"
            )
        if len(entries) == header.nb_entries - 1:
            self.notes.append(
                f"{kind.name} full ({len(entries)} of {header.nb_entries} slots, one kept empty): "
                "the producer refuses the next record with -ENOSPC"
            )
        return entries

    def feed_faults(self, entries: Iterable[Buffer | uapi.iommu_fault]) -> None:
        """Check records already taken off the fault ring (bytes or iommu_fault objects)."""
        unpack = FAULT_FIELDS.unpack_from
        groups = self.groups
        keep_views = bool(self.expected)
        position = self.records
        for entry in entries:
            data = entry if isinstance(entry, bytes | bytearray | memoryview) else bytes(entry)
            if len(data) < _FAULT_SIZE:
                self.malformed.append(
                    Malformed(position, f"iommu_fault: need {_FAULT_SIZE} bytes, got {len(data)}")
                )
                position += 1
                continue
            kind, padding, a, b, c, perm, addr = unpack(data)
            if kind == _PAGE_REQ_TYPE:
                valid = not (padding or a & ~_PRM_KNOWN or perm & ~_PERM_KNOWN)
            else:
                valid = kind == _UNRECOV_TYPE and not (
                    padding or a > _MAX_REASON or b & ~_UNRECOV_KNOWN or perm & ~_PERM_KNOWN
                )
            if not valid:
                problem = _fault_problem(data)
                if problem is not None:
                    self.malformed.append(Malformed(position, problem))
                    position += 1
                    continue
            if kind == _PAGE_REQ_TYPE:
                if not groups.fault(_prm_key(a, b, c), bool(a & _PRM_LAST), position):
                    self.duplicated.append(position)
                if keep_views:
                    pasid = b if a & _PRM_PASID_VALID else None
                    self.views.append(
                        FaultView(position, pasid=pasid, address=addr, is_write=bool(perm & _WRITE))
                    )
            elif keep_views:
                self.views.append(
                    FaultView(
                        position,
                        pasid=c if b & _UNRECOV_PASID_VALID else None,
                        address=addr if b & _UNRECOV_ADDR_VALID else None,
                        reason=a,
                        reason_name=_REASON_NAMES.get(a),
                        is_write=bool(perm & _WRITE),
                    )
                )
            position += 1
        self.records = position

    def feed_responses(self, entries: Iterable[Buffer | uapi.iommu_page_response]) -> None:
        """Check responses already taken off the response ring (bytes or iommu_page_response)."""
        self.responses_fed = True
        for entry in entries:
            data = entry if isinstance(entry, bytes | bytearray | memoryview) else bytes(entry)
            number = self.responses
            self.responses += 1
            if len(data) < RESPONSE.size:
                self.malformed.append(
                    Malformed(
                        None, f"response #{number}: need {RESPONSE.size} bytes, got {len(data)}"
                    )
                )
                continue
            _argsz, version, flags, pasid, grpid, code = RESPONSE.unpack_from(data)
            key: GroupKey = (pasid if flags & _RESP_PASID_VALID else None, grpid)
            if version != _RESP_VERSION or flags & ~_RESP_PASID_VALID or code > _MAX_CODE:
                problem = _response_problem(data)
                if problem is not None:
                    self.malformed.append(Malformed(None, f"response #{number}: {problem}"))
                    self.groups.response(key, valid=False)
                    continue
            self.groups.response(key)

    def verdict(self) -> RingVerdict:
        """Everything found so far; page-request groups never answered count as unanswered."""
        matches = match_expected(self.views, self.expected, ordered=self.ordered)
        groups = self.groups
        return RingVerdict(
            ring="legacy-dma-fault",
            records_seen=self.records,
            responses_seen=self.responses,
            duplicated=tuple(self.duplicated),
            out_of_order=matches.out_of_order,
            malformed=tuple(self.malformed),
            matched=matches.matched,
            unmatched_expected=matches.unmatched_expected,
            unexpected=matches.unexpected if self.expected else (),
            unanswered_groups=groups.unanswered() if self.responses_fed else (),
            unknown_responses=tuple(groups.unknown_responses),
            duplicate_responses=tuple(groups.duplicate_responses),
            invalid_responses=tuple(groups.invalid_responses),
            groups_without_last_page=tuple(groups.open) + tuple(groups.without_last_page),
            notes=tuple(self.notes),
        )


def _fault_problem(data: Buffer) -> str | None:
    """The uAPI module's own words for what is wrong with one fault record, if anything."""
    try:
        uapi.check_iommu_fault(uapi.iommu_fault.from_bytes(bytes(data[:_FAULT_SIZE])))
    except DecodeError as error:
        return str(error)
    return None


def _response_problem(data: Buffer) -> str | None:
    """The uAPI module's own words for what is wrong with one page response, if anything."""
    try:
        uapi.check_page_response(uapi.iommu_page_response.from_bytes(bytes(data[: RESPONSE.size])))
    except DecodeError as error:
        return str(error)
    return None


def check_fault_region(
    region: Buffer, expected: Sequence[ExpectedFault] = (), *, ordered: bool = False
) -> RingVerdict:
    """Check one fault-region snapshot: header, and each record from ``tail`` to ``head``."""
    checker = LegacyRingChecker(expected, ordered=ordered)
    checker.feed_fault_region(region)
    return checker.verdict()


def check_legacy_rings(
    fault_region: Buffer,
    response_region: Buffer,
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = False,
) -> RingVerdict:
    """Check pending faults, then pending responses against the page-request groups they opened."""
    checker = LegacyRingChecker(expected, ordered=ordered)
    checker.feed_fault_region(fault_region)
    checker.feed_response_region(response_region)
    return checker.verdict()
