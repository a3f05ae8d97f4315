"""Selftest results as JUnit XML: one testsuite per binary and configuration, one testcase per test.

Subtests become testcases of their own (``parent/subtest``).  A failing or errored test
is a ``<failure>``/``<error>`` whose text is its TAP diagnostics; a skip is ``<skipped>``
with the reason.  Expected skips and failures (``expected.toml``) are ``<skipped>`` with
``expected:`` and the entry's reason, so a CI dashboard shows them without failing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from harness.kselftest.expected import Judgement
from harness.kselftest.tap import TapResult


@dataclass(frozen=True)
class Case:
    """One test result with where it ran and how it was judged."""

    suite: str
    binary: str
    where: str
    result: TapResult
    judgement: Judgement


def _flatten(result: TapResult, prefix: str = "") -> Iterator[tuple[str, TapResult]]:
    name = f"{prefix}{result.name}"
    yield name, result
    for sub in result.subtests:
        yield from _flatten(sub, f"{name}/")


def _message(result: TapResult) -> str:
    """The most telling diagnostic line: an assertion or the reason, else the outcome."""
    for line in result.diagnostics:
        if "Expected" in line or "ASSERT" in line or "FAIL" in line.upper():
            return line.strip()
    return result.reason or result.outcome


def to_xml(cases: Iterable[Case], name: str = "kselftest") -> str:
    """The JUnit XML document for these cases, grouped by (where, binary)."""
    root = ET.Element("testsuites", name=name)
    groups: dict[tuple[str, str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.where, case.suite, case.binary), []).append(case)
    for (where, suite, binary), members in groups.items():
        element = ET.SubElement(root, "testsuite", name=f"{where}/{binary}")
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        total_time = 0.0
        for case in members:
            for test_name, result in _flatten(case.result):
                counts["tests"] += 1
                seconds = result.duration_s or 0.0
                total_time += seconds
                testcase = ET.SubElement(
                    element,
                    "testcase",
                    classname=f"kselftest.{suite}.{binary}.{where.replace('/', '.')}",
                    name=test_name,
                    time=f"{seconds:.3f}",
                )
                text = "\n".join(result.diagnostics)
                judged = case.judgement if result is case.result else None
                if judged is not None and judged.status == "expected":
                    counts["skipped"] += 1
                    ET.SubElement(
                        testcase, "skipped", message=f"expected {result.outcome}: {judged.reason}"
                    ).text = text
                elif judged is not None and judged.status == "fixed":
                    counts["failures"] += 1
                    ET.SubElement(testcase, "failure", message=judged.reason).text = text
                elif result.outcome == "error":
                    counts["errors"] += 1
                    ET.SubElement(
                        testcase, "error", message=result.reason or "no result"
                    ).text = text
                elif result.outcome == "fail":
                    counts["failures"] += 1
                    ET.SubElement(testcase, "failure", message=_message(result)).text = text
                elif result.outcome == "skip":
                    counts["skipped"] += 1
                    ET.SubElement(
                        testcase, "skipped", message=result.reason or "skipped"
                    ).text = text
                if text and result.outcome == "pass":
                    ET.SubElement(testcase, "system-out").text = text
        for key, value in counts.items():
            element.set(key, str(value))
        element.set("time", f"{total_time:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
