"""The shared verdict shape and the expected-fault matcher."""

from __future__ import annotations

import pytest

from harness.rings.expect import ExpectedFault, FaultView, Match, match_expected
from harness.rings.groups import GroupTracker
from harness.rings.verdict import Malformed, RingVerdict

pytestmark = pytest.mark.tier0


def test_clean_verdict_is_ok_and_says_so() -> None:
    verdict = RingVerdict("demo", records_seen=3, matched=(Match(0, 1),))
    assert verdict.ok
    assert verdict.problems() == {}
    assert verdict.summary().startswith("demo: OK 3 records")


@pytest.mark.parametrize(
    "field, value",
    [
        ("missing", (4,)),
        ("duplicated", (2,)),
        ("out_of_order", (7,)),
        ("malformed", (Malformed(None, "x: y"),)),
        ("overflow_signalled", True),
        ("lost_events", 3),
        ("unmatched_expected", (ExpectedFault(sid=1),)),
        ("unexpected", (0,)),
        ("unanswered_groups", (5,)),
        ("unknown_responses", (9,)),
        ("duplicate_responses", (1,)),
        ("invalid_responses", (1,)),
        ("groups_without_last_page", ((None, 3),)),
    ],
)
def test_each_problem_fails_the_verdict_and_is_named(field: str, value: object) -> None:
    verdict = RingVerdict("demo", records_seen=1, **{field: value})  # type: ignore[arg-type]
    assert not verdict.ok
    assert field in verdict.problems()
    assert field in verdict.summary()
    assert "FAIL" in verdict.summary()


def test_notes_do_not_fail_the_verdict() -> None:
    assert RingVerdict("demo", notes=("ring full",)).ok


def test_summary_is_one_line_and_truncates_long_lists() -> None:
    verdict = RingVerdict("demo", missing=tuple(range(100)))
    line = verdict.summary()
    assert "\n" not in line
    assert "(+95)" in line


def test_malformed_text_names_header_or_position() -> None:
    assert str(Malformed(None, "hdr.tail: 9 >= 8")) == "header: hdr.tail: 9 >= 8"
    assert str(Malformed(3, "bad")) == "#3: bad"


def test_expected_fault_field_kinds() -> None:
    view = FaultView(
        0, sid=8, pasid=None, address=0x8000000, reason=5, reason_name="PTE", is_write=True
    )
    assert ExpectedFault(sid=8, address=range(0x8000000, 0x8001000), is_write=True).matches(view)
    assert ExpectedFault(reason="PTE").matches(view)
    assert ExpectedFault(reason=5).matches(view)
    assert ExpectedFault(reason=lambda r: r == 5).matches(view)
    assert ExpectedFault(address=lambda a: a % 4096 == 0).matches(view)
    assert not ExpectedFault(pasid=0).matches(view)
    assert not ExpectedFault(is_write=False).matches(view)
    assert not ExpectedFault(reason="other").matches(view)
    assert str(ExpectedFault(sid=8)) == "ExpectedFault(sid=0x8)"
    assert str(ExpectedFault(label="edu write")) == "edu write"


def test_match_expected_reports_unmatched_unexpected_and_order() -> None:
    views = [FaultView(0, address=0x2000), FaultView(1, address=0x1000), FaultView(2, address=0x9)]
    want = [ExpectedFault(address=0x1000), ExpectedFault(address=0x2000), ExpectedFault(address=7)]
    result = match_expected(views, want, ordered=True)
    assert result.matched == (Match(1, 0), Match(0, 1))
    assert result.unmatched_expected == (want[2],)
    assert result.unexpected == (2,)
    assert result.out_of_order == (1,)
    assert match_expected(views, want).out_of_order == ()


def test_group_tracker_life_cycle() -> None:
    groups = GroupTracker()
    assert groups.fault(1, last=False, position=0)
    assert groups.fault(1, last=True, position=1)
    assert not groups.fault(1, last=True, position=2)
    groups.response(1)
    groups.response(1)
    groups.response(2)
    groups.response(3, valid=False)
    assert groups.fault(1, last=True, position=3)
    assert groups.duplicate_responses == [1]
    assert groups.unknown_responses == [2]
    assert groups.invalid_responses == [3]
    assert groups.unanswered() == (1,)
