"""Kernel-selftest cells of a qualification matrix: run one, and show them all as a table.

A cell is one vIOMMU configuration of ``harness.kselftest.matrix`` (x QEMU x kernel) with
the matrix's ``kselftest`` selection.  It runs like ``harness kselftest`` does (same
guest, same expected-results file) and leaves ``results.json`` and ``junit.xml`` in the
avocado test's directory.  The report's table has a row per binary and a column per cell:
``pass/fail/skip`` counts, how many of them the expected-results file lists, and every
result that did not pass with its reason.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from harness.qualify.matrix import KSELFTEST, Variant
from harness.scenarios.base import Verdict


class Cell(Protocol):
    """What the table needs of a report row."""

    id: str
    kselftest: list[dict[str, Any]]


def run_variant(
    variant: Variant, artifacts: Path, log: Callable[[str], None]
) -> tuple[Verdict, dict[str, Any]]:
    """Any matrix variant's verdict, and what its result adds to the variant's info (a
    selftest cell's per-binary summaries); avocado tests and fleet cells both run this."""
    if variant.scenario != KSELFTEST:
        from harness.scenarios.runner import run_scenario

        return run_scenario(artifacts=artifacts, **variant.run_kwargs()), {}
    verdict, summaries = run_cell(variant, artifacts, log)
    return verdict, {"kselftest": summaries}


def run_cell(
    variant: Variant, artifacts: Path, log: Callable[[str], None]
) -> tuple[Verdict, list[dict[str, Any]]]:
    """Run the cell's binaries in one guest; its verdict and per-binary summaries.

    ``results.json`` and ``junit.xml`` go into ``artifacts`` beside the guest's own."""
    from harness.images.choice import KernelChoice
    from harness.kselftest import expected as expected_results
    from harness.kselftest.build import ensure_selftests
    from harness.kselftest.junit import to_xml
    from harness.kselftest.matrix import MATRIX, select
    from harness.kselftest.report import binary_summaries, verdict_of, write_results
    from harness.kselftest.runner import run_matrix

    (config,) = [c for c in MATRIX[variant.arch] if c.label == variant.options_label]
    kernel = variant.kernel
    choice = KernelChoice(
        path=Path(kernel["kernel"]) if kernel.get("kernel") else None,
        tree=Path(kernel["tree"]) if kernel.get("tree") else None,
        flavor=kernel.get("kernel_flavor", "default"),
    )
    image = choice.image(variant.arch, kernel.get("flavor", "default"))
    build = ensure_selftests(variant.arch)
    selection = select(variant.params.get("suite", "all"), list(variant.params.get("tests", [])))
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcomes = run_matrix(
        [config],
        build,
        selection,
        expected_results.load(expected_results.EXPECTED_FILE),
        artifacts,
        lambda run, result, judged: log(f"{result.outcome}: {run.binary} {result.name}"),
        with_mock=bool(variant.params.get("mock", True)),
        log=log,
        accel=variant.accel,
        qemu=variant.qemu,
        image=image,
    )
    wall = time.monotonic() - started
    (artifacts / "junit.xml").write_text(
        to_xml([case for o in outcomes for r in o.runs for case in r.cases()])
    )
    write_results(artifacts / "results.json", outcomes, build, wall)
    verdict = verdict_of(outcomes, wall)
    verdict.facts["kernel"] = image.kernel_identity
    verdict.facts["kernel_release"] = image.kernel_release
    return verdict, [summary for o in outcomes for summary in binary_summaries(o)]


def _cell(summary: dict[str, Any] | None) -> str:
    """``pass/fail/skip``, then ``(N expected)``, ``N unexpected`` and how a lost run ended."""
    if summary is None:
        return "-"
    c = summary["counts"]
    text = f"{c.get('pass', 0)}/{c.get('fail', 0) + c.get('error', 0)}/{c.get('skip', 0)}"
    if c.get("expected"):
        text += f" ({c['expected']} expected)"
    if c.get("unexpected"):
        text += f" {c['unexpected']} UNEXPECTED"
    if summary.get("lost"):
        text += " LOST"
    return text


def _grid(cells: Sequence[Cell]) -> tuple[list[str], dict[str, list[dict[str, Any] | None]]]:
    """Binary names in first-seen order -> one summary (or None) per cell."""
    binaries: dict[str, list[dict[str, Any] | None]] = {}
    for index, cell in enumerate(cells):
        for summary in cell.kselftest:
            binaries.setdefault(summary["binary"], [None] * len(cells))[index] = summary
    return [c.id.removeprefix("kselftest.") for c in cells], binaries


def _not_passed(cells: Sequence[Cell]) -> list[tuple[str, list[Any]]]:
    return [
        (cell.id.removeprefix("kselftest."), item)
        for cell in cells
        for summary in cell.kselftest
        for item in summary.get("not_passed", [])
    ]


def text_table(cells: Sequence[Cell]) -> str:
    """The selftest matrix for the terminal: counts per binary x cell, then each non-pass."""
    heads, binaries = _grid(cells)
    width = max((len(b) for b in binaries), default=6)
    columns = [
        max(len(head), *(len(_cell(s[i])) for s in binaries.values()))
        for i, head in enumerate(heads)
    ]
    header = "  ".join(f"{h:<{w}}" for h, w in zip(heads, columns, strict=True))
    lines = [
        "kernel selftests: pass/fail/skip per binary (failures include errors)",
        f"{'binary':<{width}}  {header}".rstrip(),
    ]
    for binary, summaries in binaries.items():
        cols = (f"{_cell(s):<{w}}" for s, w in zip(summaries, columns, strict=True))
        lines.append(f"{binary:<{width}}  " + "  ".join(cols).rstrip())
    for where, (test, outcome, judgement, reason) in _not_passed(cells):
        lines.append(f"  {where} {test}: {outcome} ({judgement}) {reason}".rstrip())
    return "\n".join(lines)


def html_table(cells: Sequence[Cell]) -> list[str]:
    """The same as HTML: the grid, then a list of every result that did not pass."""
    heads, binaries = _grid(cells)
    out = [
        "<h2>Kernel selftests</h2><p>pass/fail/skip per binary (failures include errors);"
        " expected results are listed in <code>harness/kselftest/expected.toml</code>.</p>",
        "<table><tr><th>binary</th>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        + "</tr>",
    ]
    for binary, summaries in binaries.items():
        tds = []
        for s in summaries:
            bad = s is not None and (s["counts"].get("unexpected") or s.get("lost"))
            klass = "failed" if bad else "passed" if s is not None else "skipped"
            tds.append(f"<td class='{klass}'>{html.escape(_cell(s))}</td>")
        out.append(f"<tr><td><code>{html.escape(binary)}</code></td>{''.join(tds)}</tr>")
    out.append("</table>")
    rows = _not_passed(cells)
    if rows:
        out.append("<h3>Results that did not pass</h3><ul>")
        out += [
            f"<li><code>{html.escape(where)} {html.escape(test)}</code>: {html.escape(outcome)}"
            f" ({html.escape(judgement)}) {html.escape(reason)}</li>"
            for where, (test, outcome, judgement, reason) in rows
        ]
        out.append("</ul>")
    return out
