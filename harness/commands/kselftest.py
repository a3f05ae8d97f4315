"""``harness kselftest``: the kernel's iommu and VFIO selftests in guests across the vIOMMU matrix.

Builds the binaries (cached), boots one guest per vIOMMU configuration with an ``igb``
behind the vIOMMU, prints each test's result as it finishes and per-binary totals, and
writes ``junit.xml``, ``verdict.json``, ``results.json`` and each guest's artifacts (console,
dmesg, raw TAP) under one directory.  Exit status 1 when any result is neither a pass nor
listed in ``harness/kselftest/expected.toml``, or an expected one now passes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from harness.artifacts import add_artifacts_option, new_artifacts_dir
from harness.commands import name_value
from harness.images.command import add_kernel_options, kernel_choice
from harness.kselftest import expected as expected_results
from harness.kselftest.build import ensure_selftests
from harness.kselftest.expected import Judgement
from harness.kselftest.junit import to_xml
from harness.kselftest.matrix import configs, select
from harness.kselftest.report import verdict_of, write_results
from harness.kselftest.runner import BinaryRun, ConfigRun, run_matrix
from harness.kselftest.tap import TapResult

_MARKS = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP", "error": "ERROR", "xfail": "XFAIL",
          "xpass": "XPASS"}  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=("iommu", "vfio", "all"), default="all")
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument(
        "--viommu", choices=("vtd", "smmuv3", "auto"), default="auto",
        help="vIOMMU kind (default: every configuration of the arch's matrix)",
    )  # fmt: skip
    parser.add_argument(
        "--viommu-opt", type=name_value, action="append", default=[], metavar="NAME=VALUE",
        help="vIOMMU option, e.g. flts=off, stage=2 (repeatable): one ad-hoc configuration",
    )  # fmt: skip
    parser.add_argument(
        "--config", action="append", default=[], metavar="LABEL",
        help="a named configuration of the matrix, e.g. vtd-legacy, smmuv3-s2 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--test", action="append", default=[], metavar="BINARY[:FIXTURE.VARIANT.TEST]",
        help="run only this binary, or one test of it (repeatable)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, help="seconds per binary (default: per binary)")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--qemu", help="installed | 10 | 11 | a QEMU binary (default: installed)")
    parser.add_argument("--expected", type=Path, default=expected_results.EXPECTED_FILE,
                        help="expected-results file (default: %(default)s)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_kernel_options(parser, path=True)
    add_artifacts_option(parser)


def _short(text: str, width: int = 90) -> str:
    """One line of at most ``width`` characters (the whole text is in results.json)."""
    return text if len(text) <= width else text[: width - 3] + "..."


def _printer(stream: Any) -> Any:
    def on_result(run: BinaryRun, result: TapResult, judged: Judgement) -> None:
        mark = _MARKS[result.outcome]
        note = ""
        if judged.status == "expected":
            mark += " (expected)"
            note = f"  [{_short(judged.reason)}]"
        elif judged.status == "fixed":
            mark = "FIXED"
            note = f"  [{_short(judged.reason)}]"
        elif result.reason:
            note = f"  [{_short(result.reason)}]"
        took = f" {result.duration_s:.1f}s" if result.duration_s is not None else ""
        print(
            f"{mark:<16} {run.config.where} {run.binary} {result.name}{took}{note}",
            file=stream,
            flush=True,
        )

    return on_result


def summary_lines(outcomes: list[ConfigRun]) -> list[str]:
    """Per binary x configuration: pass / fail / skip / error counts, expected ones, time."""
    lines = [
        f"{'configuration':<26} {'binary':<32} {'pass':>5} {'fail':>5} {'skip':>5}"
        f" {'error':>5} {'expct':>5} {'unexp':>5} {'time':>8}"
    ]
    for outcome in outcomes:
        for run in outcome.runs:
            c = run.counts()
            state = "" if run.lost is None else f"  ({run.lost})"
            lines.append(
                f"{outcome.config.where:<26} {run.binary:<32} {c['pass']:>5} {c['fail']:>5}"
                f" {c['skip']:>5} {c['error']:>5} {c['expected']:>5} {c['unexpected']:>5}"
                f" {run.wall_s:>7.1f}s{state}"
            )
        if outcome.error and not outcome.runs:
            lines.append(f"{outcome.config.where:<26} (no binary ran: {outcome.error})")
    return lines


def run(args: argparse.Namespace) -> int:
    expected = expected_results.load(args.expected)
    selection = select(args.suite, args.test)
    kind = None if args.viommu == "auto" else args.viommu
    chosen = configs(args.arch, kind, dict(args.viommu_opt), args.config)
    kernel = kernel_choice(args)
    image = kernel.image(args.arch)
    build = ensure_selftests(args.arch)
    root = args.artifacts or new_artifacts_dir(f"kselftest-{args.arch}")
    root.mkdir(parents=True, exist_ok=True)
    live = sys.stderr if args.json else sys.stdout
    on_result = _printer(live)
    started = time.monotonic()
    outcomes = run_matrix(
        chosen,
        build,
        selection,
        expected,
        root,
        on_result,
        log=lambda text: print(f"[kselftest] {text}", file=sys.stderr, flush=True),
        accel=args.accel,
        qemu=args.qemu,
        timeout=args.timeout,
        image=image,
    )
    wall = time.monotonic() - started
    cases = [case for outcome in outcomes for r in outcome.runs for case in r.cases()]
    (root / "junit.xml").write_text(to_xml(cases))
    verdict = verdict_of(outcomes, wall)
    verdict.facts["kernel"] = image.kernel_identity
    (root / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=1, default=str) + "\n")
    document = write_results(root / "results.json", outcomes, build, wall)
    ok = verdict.passed
    if args.json:
        print(json.dumps({**document, "passed": ok, "artifacts": str(root)}, indent=1))
    else:
        print()
        print("\n".join(summary_lines(outcomes)))
        print(verdict.summary().splitlines()[0] + f" in {wall:.0f}s")
        for check in verdict.failures[:40]:
            print(f"  {check.name}: {check.got} ({check.note})")
        print(f"artifacts: {root}")
    return 0 if ok else 1
