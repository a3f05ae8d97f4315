"""VT-d fault-recording registers and page request queue: hardware models and checkers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError
from harness.rings import (
    ExpectedFault,
    VtdFaultRecorder,
    VtdPageRequestQueue,
    check_fault_recording,
    check_page_request_queue,
)
from harness.rings.vtd_queues import (
    DMA_FSTS_PFO,
    DMA_FSTS_PPF,
    DMA_PRS_PRO,
    FAULT_RECORD_CHECK,
    FRCD_SIZE,
    PAGE_REQUEST_CHECK,
)
from harness.vtd.faults import FaultRecord
from harness.vtd.prq import PageRequest

pytestmark = pytest.mark.tier0


def fault(n: int) -> FaultRecord:
    return FaultRecord.dma(
        0x18, 0x8000000 + (n << 12), 0x71, is_write=n % 2 == 0, pasid=n % 3 or None
    )


def expectation(n: int) -> ExpectedFault:
    return ExpectedFault(sid=0x18, address=0x8000000 + (n << 12), reason=0x71, is_write=n % 2 == 0)


def recorder_at(nfr: int, start: int) -> VtdFaultRecorder:
    recorder = VtdFaultRecorder(nfr)
    for i in range(start):
        recorder.record(fault(i))
        recorder.service()
    return recorder


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 16), st.data())
def test_recorded_faults_check_clean_in_order_across_wrap(nfr: int, data: st.DataObject) -> None:
    recorder = recorder_at(nfr, data.draw(st.integers(0, 2 * nfr)))
    count = data.draw(st.integers(0, nfr))
    for n in range(count):
        assert recorder.record(fault(n))
    expected = [expectation(n) for n in range(count)]
    verdict = check_fault_recording(recorder.frcd, recorder.fsts, expected, ordered=True)
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == count
    assert [m.position for m in verdict.matched] == list(range(count))
    assert len(recorder.service()) == count
    assert check_fault_recording(recorder.frcd, recorder.fsts).records_seen == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(1, 5))
def test_overflow_sets_pfo_and_is_signalled(nfr: int, extra: int) -> None:
    recorder = VtdFaultRecorder(nfr)
    results = [recorder.record(fault(n)) for n in range(nfr + extra)]
    assert results.count(False) == extra == recorder.dropped
    verdict = check_fault_recording(recorder.frcd, recorder.fsts)
    assert verdict.overflow_signalled
    assert verdict.records_seen == nfr
    assert not verdict.ok


def test_record_unreachable_from_fri_is_missing() -> None:
    recorder = VtdFaultRecorder(8)
    recorder.record(fault(0))
    stray = bytearray(fault(5).encode())
    stray[FRCD_SIZE - 1] |= 0x80
    recorder.frcd[5 * FRCD_SIZE : 6 * FRCD_SIZE] = stray
    verdict = check_fault_recording(recorder.frcd, recorder.fsts)
    assert verdict.missing == (5,)
    assert verdict.records_seen == 1


@pytest.mark.parametrize(
    "fsts, records, field",
    [
        (DMA_FSTS_PPF | (9 << 8), 1, "FSTS.FRI: 9 >= NFR 8"),
        (0, 1, "FSTS.PPF: clear while 1 records"),
        (DMA_FSTS_PPF, 0, "FSTS.PPF: set but no record"),
        (DMA_FSTS_PPF | (3 << 8), 1, "FSTS.FRI: record 3 has F clear"),
    ],
)
def test_inconsistent_fsts_is_malformed(fsts: int, records: int, field: str) -> None:
    recorder = VtdFaultRecorder(8)
    for n in range(records):
        recorder.record(fault(n))
    verdict = check_fault_recording(recorder.frcd, fsts)
    assert [m.position for m in verdict.malformed] == [None]
    assert verdict.malformed[0].error.startswith(field)


def test_corrupt_record_is_malformed_by_position() -> None:
    recorder = VtdFaultRecorder(4)
    for n in range(3):
        recorder.record(fault(n))
    recorder.frcd[FRCD_SIZE + 15] |= 0x30  # AT = 3 in record 1
    verdict = check_fault_recording(recorder.frcd, recorder.fsts)
    assert [m.position for m in verdict.malformed] == [1]
    assert "FaultRecord.AT" in verdict.malformed[0].error
    assert verdict.records_seen == 3


def test_register_block_of_wrong_size_is_malformed() -> None:
    verdict = check_fault_recording(b"\0" * 24, 0)
    assert verdict.malformed[0].position is None and "FRCD_REG" in verdict.malformed[0].error


def test_pfo_alone_is_not_ok() -> None:
    verdict = check_fault_recording(b"\0" * 16, DMA_FSTS_PFO)
    assert verdict.overflow_signalled and not verdict.ok


def request(n: int, *, group: int = 0, last: bool = True, sid: int = 0x18) -> PageRequest:
    return PageRequest(
        sid=sid, address=0x40000000 + (n << 12), pasid=1, is_read=True, lpig=last, prgi=group
    )


def queue_at(start: int) -> VtdPageRequestQueue:
    queue = VtdPageRequestQueue()
    for n in range(start):
        queue.produce(request(n))
        queue.consume()
    return queue


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.lists(st.integers(1, 3), max_size=40))
def test_page_requests_check_clean_across_wrap(start: int, group_sizes: list[int]) -> None:
    queue = queue_at(start)
    produced = 0
    for group, size in enumerate(group_sizes):
        for page in range(size):
            assert queue.produce(request(produced, group=group % 512, last=page == size - 1))
            produced += 1
    verdict = queue.check()
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == produced
    assert len(queue.consume()) == produced


def test_full_queue_sets_pro_and_keeps_one_slot() -> None:
    queue = VtdPageRequestQueue()
    accepted = [queue.produce(request(n, group=n % 512)) for n in range(130)]
    assert accepted.count(True) == 127 and queue.dropped == 3
    verdict = queue.check()
    assert verdict.overflow_signalled and not verdict.ok
    assert any("full" in note for note in verdict.notes)
    queue.consume()
    assert not queue.prs & DMA_PRS_PRO


@pytest.mark.parametrize(
    "size, pqh, pqt, text",
    [
        (4096, 0x10, 0, "DMAR_PQH_REG: 0x10 is not 32-byte aligned"),
        (4096, 0, 0x1000, "DMAR_PQT_REG: 0x1000 is beyond"),
        (3 * 4096, 0, 0, "DMAR_PQA_REG"),
        (100, 0, 0, "DMAR_PQA_REG"),
    ],
)
def test_bad_queue_registers_are_malformed(size: int, pqh: int, pqt: int, text: str) -> None:
    verdict = check_page_request_queue(bytes(size), pqh, pqt)
    assert [m.position for m in verdict.malformed] == [None]
    assert verdict.malformed[0].error.startswith(text)


def test_corrupt_descriptor_is_malformed_by_position() -> None:
    queue = queue_at(126)
    for n in range(4):
        queue.produce(request(n, group=n))
    slot = (queue.pqh // 32 + 2) % 128
    queue.memory[slot * 32] = 7
    verdict = queue.check()
    assert [m.position for m in verdict.malformed] == [2]
    assert verdict.records_seen == 4


def test_group_problems_and_stop_markers() -> None:
    queue = VtdPageRequestQueue()
    queue.produce(request(0, group=1))
    queue.produce(request(1, group=1))
    queue.produce(request(2, group=2, last=False))
    queue.produce(PageRequest(sid=0x18, pasid=1, lpig=True, prgi=3))
    verdict = queue.check()
    assert verdict.duplicated == (1,)
    assert verdict.groups_without_last_page == ((0x18, 1, 2),)
    assert any("1 stop markers" in note for note in verdict.notes)


def test_expected_page_requests() -> None:
    queue = VtdPageRequestQueue()
    queue.produce(request(0, sid=0x20))
    verdict = queue.check([ExpectedFault(sid=0x20, pasid=1, is_write=False), ExpectedFault(sid=1)])
    assert len(verdict.matched) == 1 and len(verdict.unmatched_expected) == 1


qwords = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 0xFF, 1 << 8, 1 << 31, 0x3 << 60, 1 << 63, 0xFFFFF << 40]),
)


def _decode_problem(cls: type[FaultRecord] | type[PageRequest], data: bytes) -> str | None:
    try:
        cls.decode(data)
    except DecodeError as error:
        return str(error)
    return None


@settings(max_examples=300, deadline=None)
@given(qwords, qwords, st.booleans())
def test_fast_checks_agree_with_harness_vtd_decoders(w0: int, w1: int, typed: bool) -> None:
    if typed:
        w0 = w0 & ~0xFF | 1
    record = w0.to_bytes(8, "little") + w1.to_bytes(8, "little")
    assert FAULT_RECORD_CHECK.problem(record, 0) == _decode_problem(FaultRecord, record)
    slot = record + bytes(16)
    assert PAGE_REQUEST_CHECK.problem(slot, 0) == _decode_problem(PageRequest, slot)
