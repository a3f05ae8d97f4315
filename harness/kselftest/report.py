"""Selftest runs as the harness's verdict form and as a results document (``results.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.kselftest.build import SelftestBuild
from harness.kselftest.runner import ConfigRun
from harness.scenarios.base import Check, Verdict


def verdict_of(outcomes: list[ConfigRun], wall_s: float) -> Verdict:
    """One effect row per test result (expected: pass, or the entry's outcome), plus a
    setup row per configuration saying its guest ran every binary to the end."""
    verdict = Verdict("kselftest")
    for outcome in outcomes:
        where = outcome.config.where
        verdict.add(
            Check.equal(
                f"{where}: every binary ran to its end",
                None,
                outcome.error,
                note="the guest was lost or a binary timed out" if outcome.error else "",
            )
        )
        for run in outcome.runs:
            for result, judged in zip(run.report.results, run.judgements, strict=True):
                wanted = "pass"
                if judged.status == "expected":
                    wanted = result.outcome
                verdict.add(
                    Check(
                        name=f"{where} {run.binary} {result.name}",
                        expected=wanted,
                        got=result.outcome,
                        ok=judged.ok,
                        note=judged.reason or result.reason,
                        kind="effect",
                    )
                )
    verdict.timings["wall_s"] = round(wall_s, 1)
    return verdict


def binary_summaries(outcome: ConfigRun) -> list[dict[str, Any]]:
    """Per binary of one guest: counts, wall time, how it ended, and every result that did
    not pass as ``[test, outcome, judgement, reason]`` (what a qualification report shows)."""
    return [
        {
            "suite": r.suite,
            "binary": r.binary,
            "counts": r.counts(),
            "wall_s": r.wall_s,
            "lost": r.lost,
            "not_passed": [
                [res.name, res.outcome, j.status, j.reason or res.reason]
                for res, j in zip(r.report.results, r.judgements, strict=True)
                if res.outcome != "pass"
            ],
        }
        for r in outcome.runs
    ]


def results_document(
    outcomes: list[ConfigRun], build: SelftestBuild, wall_s: float
) -> dict[str, Any]:
    """Everything a report needs: per configuration and binary, counts and each result."""
    return {
        "arch": build.arch,
        "build": str(build.root),
        "wall_s": round(wall_s, 1),
        "configs": [
            {
                "where": o.config.where,
                "viommu": o.config.kind,
                "options": o.config.options,
                "artifacts": str(o.artifacts),
                "boot_s": o.boot_s,
                "error": o.error,
                "facts": o.facts,
                "binaries": [
                    {
                        "suite": r.suite,
                        "binary": r.binary,
                        "status": r.status,
                        "wall_s": r.wall_s,
                        "lost": r.lost,
                        "counts": r.counts(),
                        "tap": str(r.raw) if r.raw else None,
                        "results": [
                            {**res.to_json(), "judgement": j.status, "judged_reason": j.reason}
                            for res, j in zip(r.report.results, r.judgements, strict=True)
                        ],
                    }
                    for r in o.runs
                ],
            }
            for o in outcomes
        ],
    }


def write_results(
    path: Path, outcomes: list[ConfigRun], build: SelftestBuild, wall_s: float
) -> dict[str, Any]:
    """Write ``results.json``; returns the document."""
    document = results_document(outcomes, build, wall_s)
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return document
