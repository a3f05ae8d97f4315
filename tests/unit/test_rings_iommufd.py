"""The iommufd fault queue checker on generated fault groups and responses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.rings import ExpectedFault, FaultQueueChecker, check_fault_queue
from harness.rings.iommufd_fault import PGFAULT, RESPONSE
from harness.uapi import iommufd as uapi

pytestmark = pytest.mark.tier0

LAST = int(uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE)
PASID_VALID = int(uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID)
WRITE = int(uapi.IOMMU_PGFAULT_PERM_WRITE)
SUCCESS = int(uapi.IOMMUFD_PAGE_RESP_SUCCESS)


@dataclass
class Group:
    cookie: int
    dev_id: int
    pasid: int
    grpid: int
    pages: int

    def records(self, *, last: bool = True) -> list[bytes]:
        out = []
        for page in range(self.pages):
            flags = PASID_VALID | (LAST if last and page == self.pages - 1 else 0)
            out.append(
                PGFAULT.pack(
                    flags, self.dev_id, self.pasid, self.grpid, WRITE, 0,
                    0x10000 + page * 0x1000, 0, self.cookie,
                )
            )  # fmt: skip
        return out


groups_strategy = st.lists(
    st.tuples(st.integers(1, 8), st.integers(0, 0xFFFFF), st.integers(0, 511), st.integers(1, 4)),
    min_size=1,
    max_size=30,
).map(lambda items: [Group(i + 1, *item) for i, item in enumerate(items)])


def faults_of(groups: list[Group]) -> bytes:
    return b"".join(b"".join(g.records()) for g in groups)


def responses_for(cookies: list[int], code: int = SUCCESS) -> bytes:
    return b"".join(RESPONSE.pack(cookie, code) for cookie in cookies)


@settings(max_examples=100, deadline=None)
@given(groups_strategy)
def test_clean_queue_answered_once_is_ok(groups: list[Group]) -> None:
    verdict = check_fault_queue(faults_of(groups), responses_for([g.cookie for g in groups]))
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == sum(g.pages for g in groups)
    assert verdict.responses_seen == len(groups)


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.data())
def test_unanswered_group_is_named(groups: list[Group], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(groups) - 1))
    answered = [g.cookie for g in groups if g.cookie != groups[k].cookie]
    verdict = check_fault_queue(faults_of(groups), responses_for(answered))
    assert verdict.unanswered_groups == (groups[k].cookie,)
    assert not verdict.ok


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.data())
def test_duplicate_response_is_named(groups: list[Group], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(groups) - 1))
    cookies = [g.cookie for g in groups] + [groups[k].cookie]
    verdict = check_fault_queue(faults_of(groups), responses_for(cookies))
    assert verdict.duplicate_responses == (groups[k].cookie,)
    assert verdict.unanswered_groups == ()


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.integers(1000, 2000))
def test_response_to_unknown_cookie_is_named(groups: list[Group], stray: int) -> None:
    cookies = [g.cookie for g in groups] + [stray]
    verdict = check_fault_queue(faults_of(groups), responses_for(cookies))
    assert verdict.unknown_responses == (stray,)


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.data())
def test_group_without_last_page_is_named(groups: list[Group], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(groups) - 1))
    buf = b"".join(b"".join(g.records(last=i != k)) for i, g in enumerate(groups))
    verdict = check_fault_queue(buf, responses_for([g.cookie for g in groups]))
    assert verdict.groups_without_last_page == (groups[k].cookie,)
    assert verdict.unanswered_groups == ()


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.data())
def test_redelivered_group_is_duplicated(groups: list[Group], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(groups) - 1))
    at = data.draw(st.integers(k + 1, len(groups)))
    order = [*groups[:at], groups[k], *groups[at:]]
    verdict = check_fault_queue(faults_of(order), responses_for([g.cookie for g in groups]))
    assert verdict.duplicated == (groups[k].cookie,)


@settings(max_examples=100, deadline=None)
@given(groups_strategy, st.data())
def test_corrupt_record_is_malformed_not_fatal(groups: list[Group], data: st.DataObject) -> None:
    records = [r for g in groups for r in g.records()]
    k = data.draw(st.integers(0, len(records) - 1))
    bad = bytearray(records[k])
    bad[20] = 0x5A
    records[k] = bytes(bad)
    verdict = check_fault_queue(b"".join(records), responses_for([g.cookie for g in groups]))
    assert [m.position for m in verdict.malformed] == [k]
    assert "__reserved" in verdict.malformed[0].error
    assert verdict.records_seen == len(records)


def test_invalid_response_code_answers_nothing() -> None:
    group = Group(1, 1, 0, 0, 1)
    verdict = check_fault_queue(faults_of([group]), responses_for([1], code=7))
    assert verdict.invalid_responses == (1,)
    assert verdict.unanswered_groups == (1,)


def test_cookie_zero_and_unknown_perm_are_malformed() -> None:
    zero = Group(0, 1, 0, 0, 1).records()[0]
    perm = bytearray(Group(2, 1, 0, 0, 1).records()[0])
    perm[16] = 0x30
    verdict = check_fault_queue(zero + bytes(perm))
    assert [m.position for m in verdict.malformed] == [0, 1]
    assert "XA_FLAGS_ALLOC1" in verdict.malformed[0].error
    assert "perm" in verdict.malformed[1].error


def test_truncated_read_and_write_buffers_are_malformed() -> None:
    group = Group(1, 1, 0, 0, 2)
    verdict = check_fault_queue(faults_of([group]) + b"\0" * 5, responses_for([1]) + b"\1")
    assert verdict.records_seen == 2
    assert len(verdict.malformed) == 2
    assert "trailing bytes" in verdict.malformed[0].error
    assert verdict.unanswered_groups == ()


def test_group_mixing_devices_under_one_cookie_is_malformed() -> None:
    a = Group(1, 1, 0, 0, 1).records(last=False)
    b = Group(1, 2, 0, 0, 1).records()
    verdict = check_fault_queue(b"".join(a + b), responses_for([1]))
    assert len(verdict.malformed) == 1
    assert "mixes" in verdict.malformed[0].error


def test_cookie_reused_after_its_response_is_fine() -> None:
    checker = FaultQueueChecker()
    group = Group(1, 1, 0, 0, 2)
    checker.feed_faults(faults_of([group]))
    checker.feed_responses(responses_for([1]))
    checker.feed_faults(faults_of([group]))
    checker.feed_responses(responses_for([1]))
    verdict = checker.verdict()
    assert verdict.ok, verdict.summary()
    assert verdict.records_seen == 4


def test_group_split_across_reads_lacks_last_page() -> None:
    checker = FaultQueueChecker()
    records = Group(1, 1, 0, 0, 2).records()
    checker.feed_faults(records[0])
    checker.feed_faults(records[1])
    checker.feed_responses(responses_for([1]))
    verdict = checker.verdict()
    assert verdict.groups_without_last_page == (1,)
    assert verdict.duplicated == (1,)


def test_decoded_records_are_accepted() -> None:
    record = uapi.iommu_hwpt_pgfault(flags=LAST, dev_id=3, addr=0x4000, perm=WRITE, cookie=1)
    response = uapi.iommu_hwpt_page_response(cookie=1, code=SUCCESS)
    expected = [ExpectedFault(sid=3, address=0x4000, is_write=True)]
    verdict = check_fault_queue([record], [response], expected)
    assert verdict.ok, verdict.summary()
    assert len(verdict.matched) == 1


def test_expected_faults_matched_and_unmatched() -> None:
    groups = [Group(1, 4, 7, 0, 1), Group(2, 5, 7, 1, 1)]
    expected = [
        ExpectedFault(sid=5, pasid=7, address=0x10000),
        ExpectedFault(sid=4),
        ExpectedFault(sid=9, label="never happens"),
    ]
    verdict = check_fault_queue(faults_of(groups), responses_for([1, 2]), expected, ordered=True)
    assert [(m.expected_index, m.position) for m in verdict.matched] == [(1, 0), (0, 1)]
    assert verdict.unmatched_expected == (expected[2],)
    assert verdict.out_of_order == (2,)
    assert "never happens" in verdict.summary()
