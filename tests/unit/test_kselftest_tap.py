"""The TAP/KTAP parser and the JUnit writer on captured and hand-made kselftest streams."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from harness.kselftest.expected import Judgement
from harness.kselftest.junit import Case, to_xml
from harness.kselftest.tap import TapParser, parse, parse_result_line

DATA = Path(__file__).parent / "data" / "kselftest"
#: captured: vfio_pci_device_test (Linux 7.3, static x86_64 build) run on a host without
#: /dev/iommu, so every test fails in its fixture with an assertion message
CAPTURED = DATA / "vfio_pci_device_test-no-iommu.tap"


def _cases(text: str, where: str = "x86_64/vtd-legacy") -> list[Case]:
    report = parse(text)
    judged = {"pass": "pass", "skip": "unexpected", "fail": "unexpected", "error": "unexpected"}
    return [
        Case("vfio", "vfio_pci_device_test", where, r, Judgement(judged[r.outcome], r.reason))
        for r in report.results
    ]


def test_captured_not_ok_becomes_a_failing_junit_testcase_with_its_diagnostics() -> None:
    report = parse(CAPTURED.read_text())
    assert report.planned == 5
    assert [r.outcome for r in report.results] == ["fail"] * 5
    first = report.results[0]
    assert first.name == "vfio_pci_device_test.config_space_read_write"
    assert "Expression: iommu->iommufd > 0" in first.diagnostics
    assert any("Assertion Failure" in line for line in first.diagnostics)
    # the next test's diagnostics do not leak into this one
    assert not any("validate_bars" in line for line in first.diagnostics)

    root = ET.fromstring(to_xml(_cases(CAPTURED.read_text())))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "5" and suite.get("tests") == "5"
    case = suite.find("testcase[@name='vfio_pci_device_test.config_space_read_write']")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None
    assert "Assertion Failure" in failure.get("message", "")
    assert "Observed: 0xffffffffffffffff > 0" in (failure.text or "")


HAND_MADE = """\
TAP version 13
1..4
# Starting 4 tests from 2 test cases.
#  RUN           iommufd.simple_close ...
#            OK  iommufd.simple_close
ok 1 iommufd.simple_close
#  RUN           vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap ...
#      SKIP      mmap() failed: Cannot allocate memory (12)
#            OK  vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap
ok 2 vfio_dma_mapping_test.iommufd_anonymous_hugetlb_1gb.dma_map_unmap # SKIP mmap() failed
    KTAP version 1
    1..2
    ok 1 sub_a
    not ok 2 sub_b
ok 3 parent
#  RUN           fixture.variant.stuck ...
# still going
"""


def test_skip_subtests_and_a_test_cut_off_by_a_hang() -> None:
    parser = TapParser()
    finished = [r for line in HAND_MADE.splitlines() for r in parser.feed(line)]
    assert [r.number for r in finished] == [1, 2, 3]
    assert parser.running() == "fixture.variant.stuck"
    report = parser.finish(cause="guest wedged: no answer for 30s")
    skip = report.results[1]
    assert (skip.outcome, skip.reason) == ("skip", "mmap() failed")
    assert [(s.name, s.outcome) for s in report.results[2].subtests] == [
        ("sub_a", "pass"),
        ("sub_b", "fail"),
    ]
    stuck = report.results[3]
    assert (stuck.name, stuck.outcome) == ("fixture.variant.stuck", "error")
    assert stuck.reason == "guest wedged: no answer for 30s"
    assert "still going" in stuck.diagnostics
    assert report.counts() == {"pass": 2, "fail": 0, "skip": 1, "xfail": 0, "xpass": 0, "error": 1}

    root = ET.fromstring(to_xml(_cases(HAND_MADE)))
    names = [c.get("name") for c in root.iter("testcase")]
    assert "parent/sub_b" in names
    sub_b = next(c for c in root.iter("testcase") if c.get("name") == "parent/sub_b")
    assert sub_b.find("failure") is not None
    stuck_case = next(c for c in root.iter("testcase") if c.get("name") == "fixture.variant.stuck")
    error = stuck_case.find("error")
    # parsed without a cause: the stream simply ended before the test's result line
    assert error is not None and "no result line" in error.get("message", "")


def test_result_line_forms() -> None:
    assert parse_result_line("ok 3 a.b.c #  a message") == (True, 3, "a.b.c", "", "a message")
    assert parse_result_line("not ok 4 x # TODO later") == (False, 4, "x", "TODO", "later")
    assert parse_result_line("ok 1 # SKIP no device") == (True, 1, "", "SKIP", "no device")
    assert parse_result_line("okay then") is None
    whole = parse("TAP version 13\n1..0 # SKIP fault injection is not enabled\n")
    assert whole.results == [] and whole.planned == 0


def test_expected_skip_is_a_junit_skip_naming_the_reason() -> None:
    report = parse(HAND_MADE)
    case = Case(
        "vfio",
        "vfio_dma_mapping_test",
        "arm64/smmuv3-s1",
        report.results[1],
        Judgement("expected", "no 1 GiB page reserved"),
    )
    root = ET.fromstring(to_xml([case]))
    skipped = root.find(".//skipped")
    assert skipped is not None
    assert skipped.get("message") == "expected skip: no 1 GiB page reserved"
    assert root.find(".//testsuite").get("name") == "arm64/smmuv3-s1/vfio_dma_mapping_test"  # type: ignore[union-attr]


NESTED = """\
TAP version 13
1..2
# timeout set to 45
# selftests: iommu: iommufd
# TAP version 13
# 1..2
# # Starting 2 tests from 1 test cases.
# #  RUN           iommufd.simple_close ...
# #            OK  iommufd.simple_close
# ok 1 iommufd.simple_close
# #  RUN           iommufd.cmd_fail ...
# # iommufd.c:42:cmd_fail:Expected 0 (0) == rc (-1)
# #          FAIL  iommufd.cmd_fail
# not ok 2 iommufd.cmd_fail
# # FAILED: 1 / 2 tests passed.
not ok 1 selftests: iommu: iommufd # exit=1
# selftests: iommu: iommufd_fail_nth
ok 2 selftests: iommu: iommufd_fail_nth
"""


def test_run_kselftest_nesting_by_hash_prefix_becomes_subtests() -> None:
    report = parse(NESTED)
    assert [(r.name, r.outcome) for r in report.results] == [
        ("selftests: iommu: iommufd", "fail"),
        ("selftests: iommu: iommufd_fail_nth", "pass"),
    ]
    inner = report.results[0].subtests
    assert [(s.number, s.name, s.outcome) for s in inner] == [
        (1, "iommufd.simple_close", "pass"),
        (2, "iommufd.cmd_fail", "fail"),
    ]
    # the nested test's assertion message is its diagnostic, its own prefix removed
    assert "iommufd.c:42:cmd_fail:Expected 0 (0) == rc (-1)" in inner[1].diagnostics
    assert "selftests: iommu: iommufd" in report.results[0].diagnostics
