"""The seed-000 DMA fault region and response region: producer model and checker."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError
from harness.rings import (
    FAULT_RING,
    RESPONSE_RING,
    ExpectedFault,
    LegacyRing,
    LegacyRingChecker,
    check_fault_region,
    check_legacy_rings,
)
from harness.rings.legacy_region import pending_entries, read_header
from harness.uapi import legacy as uapi

pytestmark = pytest.mark.tier0


def unrecoverable(addr: int, reason: int = 5, *, write: bool = True) -> bytes:
    fault = uapi.iommu_fault(type=uapi.IOMMU_FAULT_DMA_UNRECOV)
    fault.event.reason = reason
    fault.event.flags = uapi.IOMMU_FAULT_UNRECOV_ADDR_VALID
    fault.event.perm = uapi.IOMMU_FAULT_PERM_WRITE if write else uapi.IOMMU_FAULT_PERM_READ
    fault.event.addr = addr
    return fault.to_bytes()


def page_request(grpid: int, addr: int, *, last: bool = True, pasid: int | None = None) -> bytes:
    fault = uapi.iommu_fault(type=uapi.IOMMU_FAULT_PAGE_REQ)
    flags = uapi.IOMMU_FAULT_PAGE_REQUEST_LAST_PAGE if last else 0
    if pasid is not None:
        flags |= uapi.IOMMU_FAULT_PAGE_REQUEST_PASID_VALID
        fault.prm.pasid = pasid
    fault.prm.flags = flags
    fault.prm.grpid = grpid
    fault.prm.perm = uapi.IOMMU_FAULT_PERM_READ
    fault.prm.addr = addr
    return fault.to_bytes()


def response(grpid: int, *, pasid: int | None = None, version: int = 1) -> bytes:
    resp = uapi.iommu_page_response(
        argsz=ctypes.sizeof(uapi.iommu_page_response), version=version, grpid=grpid
    )
    if pasid is not None:
        resp.flags = uapi.IOMMU_PAGE_RESP_PASID_VALID
        resp.pasid = pasid
    return resp.to_bytes()


def ring_at(kind: object, nb_entries: int, start: int) -> LegacyRing:
    """A ring whose head and tail both sit at ``start``, as after earlier traffic."""
    ring = LegacyRing.create(FAULT_RING if kind is FAULT_RING else RESPONSE_RING, nb_entries)
    for _ in range(start):
        assert ring.produce(b"\0" * ring.kind.entry_size)
        ring.consume()
    return ring


def set_field(region: bytearray, slot: int, value: int) -> None:
    struct.pack_into("<I", region, slot * 4, value)


faults_strategy = st.lists(
    st.one_of(
        st.builds(
            lambda a, r: unrecoverable(a << 12, r), st.integers(0, 1 << 20), st.integers(0, 8)
        ),
        st.builds(
            lambda g, a: page_request(g, a << 12), st.integers(0, 511), st.integers(0, 1 << 20)
        ),
    ),
    max_size=15,
)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 16), st.integers(0, 40), faults_strategy)
def test_produced_faults_check_clean_across_wraparound(
    nb_entries: int, start: int, faults: list[bytes]
) -> None:
    ring = ring_at(FAULT_RING, nb_entries, start % nb_entries)
    accepted = [f for f in faults if ring.produce(f)]
    assert len(accepted) == min(len(faults), nb_entries - 1)
    verdict = check_fault_region(ring.region)
    assert not verdict.malformed, verdict.summary()
    assert verdict.records_seen == len(accepted)
    assert ring.consume() == accepted
    assert read_header(ring.region, FAULT_RING).head == read_header(ring.region, FAULT_RING).tail


def test_full_ring_keeps_one_slot_empty_and_is_noted() -> None:
    ring = LegacyRing.create(FAULT_RING, 4)
    results = [ring.produce(unrecoverable(i << 12)) for i in range(5)]
    assert results == [True, True, True, False, False]
    verdict = check_fault_region(ring.region)
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == 3
    assert any("full" in note and "ENOSPC" in note for note in verdict.notes)


def test_empty_ring_is_ok() -> None:
    verdict = check_fault_region(LegacyRing.create(FAULT_RING, 8).region)
    assert verdict.ok and verdict.records_seen == 0


@pytest.mark.parametrize(
    "slot, value, field",
    [
        (0, 8, "vfio_region_dma_fault.tail"),
        (4, 9, "vfio_region_dma_fault.head"),
        (1, 16, "vfio_region_dma_fault.entry_size"),
        (2, 0, "vfio_region_dma_fault.nb_entries"),
        (3, 8, "vfio_region_dma_fault.offset"),
        (3, 1 << 20, "vfio_region_dma_fault.offset"),
    ],
)
def test_corrupt_header_is_malformed_not_a_crash(slot: int, value: int, field: str) -> None:
    ring = LegacyRing.create(FAULT_RING, 8)
    ring.produce(unrecoverable(0x1000))
    set_field(ring.region, slot, value)
    verdict = check_fault_region(ring.region)
    assert not verdict.ok
    assert verdict.records_seen == 0
    assert [m.position for m in verdict.malformed] == [None]
    assert verdict.malformed[0].error.startswith(field)


def test_region_shorter_than_header_is_malformed() -> None:
    verdict = check_fault_region(b"\0" * 7)
    assert verdict.malformed[0].position is None
    assert "need 20 bytes" in verdict.malformed[0].error


def test_larger_entry_size_is_read_with_a_note() -> None:
    ring = LegacyRing.create(FAULT_RING, 4, entry_size=128)
    ring.produce(unrecoverable(0x1000))
    verdict = check_fault_region(ring.region)
    assert verdict.ok and verdict.records_seen == 1
    assert any("entry_size 128" in note for note in verdict.notes)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.data())
def test_corrupt_record_is_named_by_position(count: int, data: st.DataObject) -> None:
    ring = ring_at(FAULT_RING, 16, data.draw(st.integers(0, 15)))
    for i in range(count):
        ring.produce(unrecoverable(i << 12))
    k = data.draw(st.integers(0, count - 1))
    header = ring.header()
    slot = (header.tail + k) % header.nb_entries
    bad_type = data.draw(st.sampled_from([0, 3, 0xFFFF]))
    set_field(ring.region, (header.offset + slot * header.entry_size) // 4, bad_type)
    verdict = check_fault_region(ring.region)
    assert [m.position for m in verdict.malformed] == [k]
    assert "iommu_fault.type" in verdict.malformed[0].error
    assert verdict.records_seen == count


@pytest.mark.parametrize(
    "offset, value, field",
    [(4, 1, "iommu_fault.padding"), (8, 99, "iommu_fault.event.reason"), (12, 0x80, "event.flags")],
)
def test_record_field_problems_use_the_uapi_wording(offset: int, value: int, field: str) -> None:
    ring = LegacyRing.create(FAULT_RING, 4)
    record = bytearray(unrecoverable(0x1000))
    struct.pack_into("<I", record, offset, value)
    ring.produce(bytes(record))
    verdict = check_fault_region(ring.region)
    assert field in verdict.malformed[0].error


def _rings(faults: list[bytes], responses: list[bytes]) -> tuple[bytearray, bytearray]:
    fault_ring = LegacyRing.create(FAULT_RING, 32)
    response_ring = LegacyRing.create(RESPONSE_RING, 32)
    for fault in faults:
        assert fault_ring.produce(fault)
    for resp in responses:
        assert response_ring.produce(resp)
    return fault_ring.region, response_ring.region


groups_strategy = st.lists(st.integers(0, 511), min_size=1, max_size=10, unique=True)


@settings(max_examples=100, deadline=None)
@given(groups_strategy)
def test_every_group_answered_once_is_ok(grpids: list[int]) -> None:
    faults = [
        r for g in grpids for r in (page_request(g, 0x1000, last=False), page_request(g, 0x2000))
    ]
    verdict = check_legacy_rings(*_rings(faults, [response(g) for g in grpids]))
    assert verdict.ok, verdict.summary()
    assert verdict.responses_seen == len(grpids)


@settings(max_examples=100, deadline=None)
@given(groups_strategy.filter(lambda g: len(g) > 1), st.data())
def test_response_problems_are_named(grpids: list[int], data: st.DataObject) -> None:
    k = data.draw(st.sampled_from(grpids[1:]))
    faults = [page_request(g, 0x1000) for g in grpids]
    responses = [response(g) for g in grpids if g != k]
    responses += [response(grpids[0]), response(600), response(700, version=2)]
    verdict = check_legacy_rings(*_rings(faults, responses))
    assert verdict.unanswered_groups == ((None, k),)
    assert verdict.duplicate_responses == ((None, grpids[0]),)
    assert verdict.unknown_responses == ((None, 600),)
    assert verdict.invalid_responses == ((None, 700),)
    assert "iommu_page_response.version" in verdict.malformed[-1].error


def test_pasid_is_part_of_the_group_key() -> None:
    faults = [page_request(1, 0x1000, pasid=5)]
    verdict = check_legacy_rings(*_rings(faults, [response(1)]))
    assert verdict.unanswered_groups == ((5, 1),)
    assert verdict.unknown_responses == ((None, 1),)
    assert check_legacy_rings(*_rings(faults, [response(1, pasid=5)])).ok


def test_redelivered_group_and_missing_last_page_are_named() -> None:
    faults = [page_request(3, 0x1000), page_request(3, 0x1000), page_request(4, 0x2000, last=False)]
    verdict = check_fault_region(_rings(faults, [])[0])
    assert verdict.duplicated == (1,)
    assert verdict.groups_without_last_page == ((None, 4),)
    assert verdict.unanswered_groups == ()


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 8), st.lists(st.integers(0, 6), min_size=1, max_size=20))
def test_streaming_producer_consumer_loses_nothing_it_accepted(
    nb_entries: int, bursts: list[int]
) -> None:
    fault_ring = LegacyRing.create(FAULT_RING, nb_entries)
    checker = LegacyRingChecker()
    produced: list[bytes] = []
    consumed: list[bytes] = []
    n = 0
    for burst in bursts:
        for _ in range(burst):
            fault = unrecoverable(n << 12)
            n += 1
            if fault_ring.produce(fault):
                produced.append(fault)
        checker.feed_fault_region(fault_ring.region)
        consumed += fault_ring.consume()
    assert consumed == produced
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == len(produced)


def test_expected_unrecoverable_fault_by_reason_name() -> None:
    ring = LegacyRing.create(FAULT_RING, 4)
    ring.produce(unrecoverable(0x8000000, int(uapi.IOMMU_FAULT_REASON_PTE_FETCH)))
    expected = [
        ExpectedFault(address=0x8000000, reason="IOMMU_FAULT_REASON_PTE_FETCH", is_write=True),
        ExpectedFault(address=0x9000000),
    ]
    verdict = check_fault_region(ring.region, expected)
    assert len(verdict.matched) == 1
    assert verdict.unmatched_expected == (expected[1],)


def test_decoded_records_are_accepted() -> None:
    checker = LegacyRingChecker()
    checker.feed_faults([uapi.iommu_fault.from_bytes(page_request(9, 0x1000))])
    checker.feed_responses([uapi.iommu_page_response.from_bytes(response(9))])
    assert checker.verdict().ok


def test_pending_entries_matches_the_uapi_decoder() -> None:
    ring = ring_at(FAULT_RING, 8, 6)
    faults = [unrecoverable(i << 12) for i in range(5)]
    for fault in faults:
        ring.produce(fault)
    _, entries = pending_entries(ring.region, FAULT_RING)
    _, decoded = uapi.decode_dma_fault_region(ring.region)
    assert entries == faults == [d.to_bytes() for d in decoded]


u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3, 7, 8, 9, 0xF, 0x10]))


@settings(max_examples=300, deadline=None)
@given(st.lists(u32, min_size=6, max_size=6), st.integers(0, 2**64 - 1))
def test_fault_fast_path_agrees_with_check_iommu_fault(fields: list[int], addr: int) -> None:
    kind = fields[0] % 4
    data = struct.pack("<IIIIIIQ", kind, *fields[1:], addr).ljust(64, b"\0")
    try:
        uapi.check_iommu_fault(uapi.iommu_fault.from_bytes(data))
        want: list[int | None] = []
    except DecodeError:
        want = [0]
    checker = LegacyRingChecker()
    checker.feed_faults([data])
    assert [m.position for m in checker.verdict().malformed] == want


@settings(max_examples=200, deadline=None)
@given(st.lists(u32, min_size=6, max_size=6))
def test_response_fast_path_agrees_with_check_page_response(fields: list[int]) -> None:
    data = struct.pack("<6I", *fields)
    try:
        uapi.check_page_response(uapi.iommu_page_response.from_bytes(data))
        valid = True
    except DecodeError:
        valid = False
    checker = LegacyRingChecker()
    checker.feed_responses([data])
    assert bool(checker.verdict().invalid_responses) is not valid


def test_explicit_wraparound_reads_in_ring_order() -> None:
    ring = ring_at(FAULT_RING, 4, 2)
    faults = [unrecoverable(0x1000), unrecoverable(0x2000), unrecoverable(0x3000)]
    assert all(ring.produce(f) for f in faults)
    header = ring.header()
    assert (header.tail, header.head) == (2, 1)
    expected = [ExpectedFault(address=a) for a in (0x1000, 0x2000, 0x3000)]
    verdict = check_fault_region(ring.region, expected, ordered=True)
    assert verdict.ok, verdict.summary()
    assert [m.position for m in verdict.matched] == [0, 1, 2]
