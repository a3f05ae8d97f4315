"""The SMMUv3 event queue: PROD/CONS wrap and overflow flags, the queue model, the fast check."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError, EncodeError
from harness.rings import ExpectedFault, SmmuEventCheck, SmmuEventQueue, check_smmu_evtq
from harness.rings.payloads import smmu_view
from harness.rings.smmu_evtq import OVERFLOW_FLAG, pending_count
from harness.smmuv3.events import EVENT_IDS, LAYOUTS, decode_event, encode_event

pytestmark = pytest.mark.tier0


def event(n: int) -> bytes:
    return encode_event(
        "F_PERMISSION",
        sid=0x100 + n % 4,
        address=0x40000000 + (n << 12),
        is_write=n % 3 == 0,
        event_class="IN",
    )


def queue_at(log2size: int, start: int) -> SmmuEventQueue:
    queue = SmmuEventQueue(log2size)
    for n in range(start):
        queue.produce(event(n))
        queue.consume()
    return queue


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 5), st.data())
def test_queue_checks_clean_across_wrap(log2size: int, data: st.DataObject) -> None:
    size = 1 << log2size
    queue = queue_at(log2size, data.draw(st.integers(0, 3 * size)))
    n = data.draw(st.integers(0, size))
    produced = [event(i) for i in range(n)]
    assert all(queue.produce(record) for record in produced)
    expected = [ExpectedFault(address=0x40000000 + (i << 12)) for i in range(n)]
    verdict = queue.check(expected, ordered=True)
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == n
    assert (n == size) == any("full" in note for note in verdict.notes)
    assert queue.consume() == produced


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 4), st.integers(1, 6))
def test_overflow_toggles_once_and_is_acked_by_consume(log2size: int, extra: int) -> None:
    queue = SmmuEventQueue(log2size)
    size = 1 << log2size
    results = [queue.produce(event(i)) for i in range(size + extra)]
    assert results.count(False) == extra == queue.dropped
    assert queue.prod & OVERFLOW_FLAG and not queue.cons & OVERFLOW_FLAG
    verdict = queue.check()
    assert verdict.overflow_signalled and not verdict.ok
    assert verdict.records_seen == size
    assert len(queue.consume()) == size
    after = queue.check()
    assert after.ok and not after.overflow_signalled


@pytest.mark.parametrize(
    "log2size, prod, cons, text",
    [
        (3, 1 << 5, 0, "SMMU_EVENTQ_PROD: RES0 bits 0x20"),
        (3, 0, 1 << 30, "SMMU_EVENTQ_CONS: RES0 bits 0x40000000"),
        (3, 2, 5, "SMMU_EVENTQ_CONS: index 5 is ahead of PROD 2"),
        (3, 8 | 5, 2, "SMMU_EVENTQ_PROD: 11 records pending"),
        (20, 0, 0, "SMMU_EVENTQ_BASE.LOG2SIZE: 20"),
    ],
)
def test_bad_registers_are_malformed(log2size: int, prod: int, cons: int, text: str) -> None:
    verdict = check_smmu_evtq(bytes(32 << min(log2size, 3)), log2size, prod, cons)
    assert any(m.position is None and m.error.startswith(text) for m in verdict.malformed)
    assert not verdict.ok


def test_short_queue_memory_is_malformed() -> None:
    verdict = check_smmu_evtq(bytes(100), 2, 1, 0)
    assert "queue memory is 100 bytes" in verdict.malformed[0].error


def test_pending_count_raises_only_decode_error() -> None:
    assert pending_count(8 | 1, 6, 3) == 3
    with pytest.raises(DecodeError):
        pending_count(1, 2, 3)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.data())
def test_corrupt_record_is_malformed_with_its_slot(log2size: int, data: st.DataObject) -> None:
    size = 1 << log2size
    queue = queue_at(log2size, data.draw(st.integers(0, 2 * size)))
    n = data.draw(st.integers(1, size))
    for i in range(n):
        queue.produce(event(i))
    k = data.draw(st.integers(0, n - 1))
    slot = ((queue.cons & (size - 1)) + k) % size
    queue.memory[slot * 32] = 0x77
    verdict = queue.check()
    assert [m.position for m in verdict.malformed] == [k]
    assert verdict.malformed[0].error.startswith(f"slot {slot}: EVT.EventID")
    assert verdict.records_seen == n


words = st.integers(0, 2**64 - 1)
sparse = st.sampled_from([0, 1 << 10, 1 << 39, 1 << 63, 0xFFF << 52, 2**64 - 1])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([*sorted(LAYOUTS), 0x00, 0x30, 0xE3, 0xFF]),
    st.tuples(st.one_of(words, sparse), st.one_of(words, sparse), words, st.one_of(words, sparse)),
    st.booleans(),
)
def test_fast_check_agrees_with_decode_event(
    event_id: int, raw: tuple[int, int, int, int], strict: bool
) -> None:
    w0 = raw[0] & ~0xFF | event_id
    data = b"".join(w.to_bytes(8, "little") for w in (w0, *raw[1:]))
    try:
        decode_event(data, strict=strict)
        want = None
    except DecodeError as error:
        want = str(error)
    assert SmmuEventCheck(strict=strict).problem_at(data, 0) == want


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 40), st.integers(0, 255))
def test_fast_check_agrees_on_single_bit_flips_of_valid_records(n: int, bit: int) -> None:
    data = bytearray(event(n))
    data[bit // 8] ^= 1 << (bit % 8)
    try:
        decode_event(bytes(data))
        want = None
    except DecodeError as error:
        want = str(error)
    assert SmmuEventCheck().problem_at(bytes(data), 0) == want


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(EVENT_IDS)),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**20 - 1)),
    st.integers(0, 2**52 - 1),
    st.booleans(),
)
def test_fast_view_agrees_with_decode_event(
    name: str, sid: int, ssid: int | None, address: int, write: bool
) -> None:
    kwargs: dict[str, Any] = {"sid": sid, "ssid": ssid, "address": address << 12, "is_write": write}
    record = None
    for drop in ((), ("ssid",), ("is_write",), ("address",), ("ssid", "is_write", "address")):
        try:
            record = encode_event(name, **{k: v for k, v in kwargs.items() if k not in drop})
            break
        except EncodeError:
            continue
    if record is None:
        return
    check = SmmuEventCheck()
    assert check.problem_at(record, 0) is None
    assert check.view(3, record) == smmu_view(3, decode_event(record))


def test_explicit_wrap_bit_flip() -> None:
    queue = queue_at(2, 3)
    assert (queue.prod, queue.cons) == (3, 3)
    records = [event(i) for i in range(4)]
    assert all(queue.produce(r) for r in records)
    assert queue.prod == 0b111 and queue.full
    verdict = check_smmu_evtq(queue.memory, 2, queue.prod, queue.cons)
    assert verdict.ok and verdict.records_seen == 4
    assert queue.consume() == records and queue.cons == 0b111
