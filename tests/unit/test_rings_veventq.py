"""The vEVENTQ checker: sequence numbers (with the kernel's INT_MAX wrap), LOST_EVENTS, payloads."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError
from harness.rings import (
    DecoderCheck,
    ExpectedFault,
    VEvent,
    VEventQChecker,
    check_veventq,
    parse_veventq,
)
from harness.rings.veventq import SEQUENCE_MASK, encode_vevent
from harness.smmuv3 import encode_event

pytestmark = pytest.mark.tier0

INT_MAX = 2**31 - 1


def event(n: int) -> bytes:
    return encode_event(
        "F_TRANSLATION",
        sid=n % 7,
        ssid=n % 5,
        address=0x8000000 + (n << 12),
        is_write=n % 2 == 0,
        event_class="IN",
    )


def stream(seqs: list[int], *, lost: frozenset[int] = frozenset()) -> list[bytes]:
    return [encode_vevent(s, b"" if s in lost else event(s), lost=s in lost) for s in seqs]


def seqs_from(start: int, n: int) -> list[int]:
    return [(start + i) & SEQUENCE_MASK for i in range(n)]


starts = st.one_of(st.integers(0, INT_MAX), st.integers(INT_MAX - 8, INT_MAX))


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(0, 60))
def test_clean_stream_is_ok_including_wrap(start: int, n: int) -> None:
    seqs = seqs_from(start, n)
    verdict = check_veventq(b"".join(stream(seqs)), first_sequence=start)
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == n


def test_sequence_wraps_from_int_max_to_zero() -> None:
    seqs = [INT_MAX - 1, INT_MAX, 0, 1]
    assert check_veventq(b"".join(stream(seqs))).ok
    skipped = check_veventq(b"".join(stream([INT_MAX - 1, 0, 1])))
    assert skipped.missing == (INT_MAX,)
    over = check_veventq(b"".join(stream([INT_MAX, 2])))
    assert over.missing == (0, 1)


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(2, 40), st.data())
def test_dropped_record_is_missing(start: int, n: int, data: st.DataObject) -> None:
    seqs = seqs_from(start, n)
    k = data.draw(st.integers(0, n - 2))
    records = stream(seqs)
    del records[k]
    verdict = check_veventq(b"".join(records), first_sequence=start)
    assert verdict.missing == (seqs[k],)
    assert not verdict.overflow_signalled and verdict.duplicated == verdict.out_of_order == ()


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(1, 40), st.data())
def test_duplicate_of_record_k_is_named(start: int, n: int, data: st.DataObject) -> None:
    seqs = seqs_from(start, n)
    k = data.draw(st.integers(0, n - 1))
    at = data.draw(st.integers(k + 1, n))
    records = stream(seqs)
    records.insert(at, records[k])
    verdict = check_veventq(b"".join(records), first_sequence=start)
    assert verdict.duplicated == (seqs[k],)
    assert verdict.missing == verdict.out_of_order == ()
    assert verdict.records_seen == n + 1


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(2, 40), st.data())
def test_swapped_records_are_out_of_order(start: int, n: int, data: st.DataObject) -> None:
    seqs = seqs_from(start, n)
    k = data.draw(st.integers(0, n - 2))
    records = stream(seqs)
    records[k], records[k + 1] = records[k + 1], records[k]
    verdict = check_veventq(b"".join(records), first_sequence=start)
    assert verdict.out_of_order == (seqs[k],)
    assert verdict.missing == verdict.duplicated == ()


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(1, 30), st.data())
def test_lost_events_header_at_the_tail(start: int, n: int, data: st.DataObject) -> None:
    seqs = seqs_from(start, n)
    k = data.draw(st.integers(0, n - 1))
    records = stream(seqs[:k]) + stream([seqs[-1]], lost=frozenset({seqs[-1]}))
    verdict = check_veventq(b"".join(records), first_sequence=start)
    assert verdict.overflow_signalled
    assert verdict.lost_events == n - k
    assert verdict.missing == ()
    assert not verdict.ok
    followed = records + stream([(seqs[-1] + 1) & SEQUENCE_MASK])
    assert check_veventq(b"".join(followed), first_sequence=start).lost_events == n - k


def test_lost_header_is_header_only_and_kernel_doc_example() -> None:
    buf = b"".join(stream([3], lost=frozenset()) + stream([4], lost=frozenset({4})))
    assert len(buf) == 8 + 32 + 8
    records = parse_veventq(buf)
    assert [(r.sequence, r.lost_events, r.payload is None) for r in records] == [
        (3, False, False),
        (4, True, True),
    ]
    verdict = check_veventq(buf)
    assert verdict.lost_events == 1 and verdict.overflow_signalled
    gap = check_veventq(b"".join(stream([3, 6])))
    assert gap.missing == (4, 5)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.data())
def test_corrupt_payload_is_malformed_by_position(n: int, data: st.DataObject) -> None:
    records = stream(seqs_from(0, n))
    k = data.draw(st.integers(0, n - 1))
    bad = bytearray(records[k])
    bad[8] = 0x77
    records[k] = bytes(bad)
    verdict = check_veventq(b"".join(records), first_sequence=0)
    assert [m.position for m in verdict.malformed] == [k]
    assert "EVT.EventID" in verdict.malformed[0].error
    assert verdict.records_seen == n and verdict.missing == ()


def test_corrupt_header_and_truncation_are_malformed() -> None:
    records = stream([0, 1, 2])
    flags = bytearray(records[1])
    flags[0] = 0x4
    high = bytearray(records[2])
    high[7] = 0x80
    verdict = check_veventq(records[0] + bytes(flags) + bytes(high) + records[0][:20])
    assert [m.position for m in verdict.malformed] == [1, 2, 3]
    assert "flags: unknown bits 0x4" in verdict.malformed[0].error
    assert "beyond INT_MAX" in verdict.malformed[1].error
    assert "12 bytes left" in verdict.malformed[2].error
    assert "trailing" in check_veventq(records[0] + b"\0\0\0").malformed[0].error
    with pytest.raises(DecodeError, match="iommufd_vevent_header"):
        parse_veventq(records[0][:30])


def test_reserved_bits_need_strict_false() -> None:
    raw = bytearray(event(1))
    raw[1] |= 0x04  # word 0 bit 10: RES0 in F_TRANSLATION
    assert "RES0" in check_veventq(encode_vevent(0, bytes(raw))).malformed[0].error
    assert check_veventq(encode_vevent(0, bytes(raw)), strict=False).ok


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 40), st.lists(st.integers(0, 40), max_size=5))
def test_state_carries_across_reads(n: int, cuts: list[int]) -> None:
    records = stream(seqs_from(INT_MAX - 20, n))
    del records[n // 2 : n // 2 + 1]
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    checker = VEventQChecker(first_sequence=INT_MAX - 20)
    for lo, hi in itertools.pairwise(bounds):
        checker.feed(b"".join(records[lo:hi]))
    whole = check_veventq(b"".join(records), first_sequence=INT_MAX - 20)
    assert checker.verdict() == whole


def test_parsed_records_are_accepted() -> None:
    buf = b"".join(stream([5, 6, 8]))
    assert check_veventq(parse_veventq(buf)) == check_veventq(buf)


def test_expected_smmu_events() -> None:
    buf = b"".join(stream(seqs_from(10, 4)))
    expected = [
        ExpectedFault(sid=6, pasid=3, address=0x800D000, is_write=False, reason="F_TRANSLATION"),
        ExpectedFault(sid=3, reason=0x10, is_write=True),
        ExpectedFault(sid=6),
    ]
    verdict = check_veventq(buf, expected, ordered=True)
    assert [(m.expected_index, m.position) for m in verdict.matched] == [(1, 0), (0, 3)]
    assert verdict.unmatched_expected == (expected[2],)
    assert verdict.unexpected == (1, 2)
    assert verdict.out_of_order == (13,)


def test_short_payload_in_parsed_records_is_malformed() -> None:
    records = [VEvent(0, 0, 0, event(0)), VEvent(40, 0, 1, event(1)[:16])]
    verdict = check_veventq(records)
    assert [m.position for m in verdict.malformed] == [1]
    assert "16 bytes left" in verdict.malformed[0].error


def test_other_vendor_payloads_and_header_only_checks() -> None:
    def decode(data: bytes) -> bytes:
        if data[0]:
            raise DecodeError("tegra.lvcmdq_err_map", "bad")
        return data

    buf = encode_vevent(0, b"\0" * 16) + encode_vevent(1, b"\1" + b"\0" * 15)
    verdict = check_veventq(buf, payload=DecoderCheck(16, decode))
    assert [m.position for m in verdict.malformed] == [1]
    assert check_veventq(buf, record_size=16).ok


def test_huge_gap_is_listed_partially_with_a_note() -> None:
    verdict = check_veventq(b"".join(stream([0, 200_000])))
    assert len(verdict.missing) == 1 << 16
    assert any("gap of 199999" in note for note in verdict.notes)
