"""A shrunk failure as a developer gets it: a report, a standalone script, a repro bundle.

``write(failure, directory, ...)`` writes ``fuzz-failure.json`` (every step with the
model's prediction and the kernel's answer, the failing step, the splat),
``fuzz-repro.py`` (runs in the guest with ``python3 fuzz-repro.py``: the steps through
the guest half's ``Session``, i.e. the shipped driver, stopping at the first answer that
differs from the prediction) and, given the booted configuration, ``repro.json``: a
bundle of the ``fuzz-replay`` scenario for ``harness repro``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness import repro
from harness.fuzz.replay import NAME, NAME_SMMUV3, get_registered, step_label
from harness.fuzz.rules import FuzzFailureError, GuestLostError
from harness.guest import Guest
from harness.scenarios.base import EFFECT, Check, Prepared, Verdict
from harness.scenarios.runner import KERNEL_HEALTH

SCRIPT = "fuzz-repro.py"
REPORT = "fuzz-failure.json"

_TEMPLATE = '''#!/usr/bin/env python3
"""Reproducer written by `harness fuzz` ({title}).

{what}

Run it in a guest booted from the same configuration (`harness repro {bundle} --keep`,
then copy this file over): `python3 {script}`.  It finds the harness the agent unpacked
under /run/viommu-agent (or HARNESS_PATH), replays the steps on a fresh /dev/iommu with
the shipped driver, and stops at the first answer that differs from the model's.
"""

import glob
import json
import os
import sys

roots = [os.environ.get("HARNESS_PATH", "")] + sorted(
    glob.glob("/run/viommu-agent/*"), key=os.path.getmtime, reverse=True
)
sys.path.insert(0, next(r for r in roots if r and os.path.isdir(os.path.join(r, "harness"))))

{session_import}  # noqa: E402

PLANT = {plant!r}
STEPS = json.loads(r"""
{steps}
""")

session = {session_new}
status = 0
try:
    for i, s in enumerate(STEPS):
        got = session.execute(s["op"], s["args"])
        seen = {{k: got.get(k) for k in s["expect"]}}
        mark = "ok  " if seen == s["expect"] else "DIFF"
        print(f"{{mark}} step {{i}}: {{s['op']}}({{s['args']}})"
              f" expected {{s['expect']}} got {{got}}")
        if seen != s["expect"]:
            status = 1
            break
finally:
    session.close()
if status == 0:
    print("every step answered as predicted (the kernel log may still hold a splat: dmesg)")
sys.exit(status)
'''


def steps_of(trace: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The replayable part of a trace: each step and its prediction."""
    return [{"step": s["step"], "expect": s["expect"]} for s in trace]


def failure_report(failure: FuzzFailureError | GuestLostError) -> dict[str, Any]:
    """The failure as JSON: what failed, the failing step, expected vs actual, the splat."""
    trace = failure.trace
    index = failure.failing_step if isinstance(failure, FuzzFailureError) else len(trace) - 1
    report: dict[str, Any] = {
        "what": str(failure),
        "steps": len(trace),
        "failing_step": index,
        "trace": trace,
        "splat": getattr(failure, "splat", ""),
    }
    if index is not None and 0 <= index < len(trace):
        bad = trace[index]
        report["failing"] = {
            "label": step_label(index, bad["step"]),
            "expected": bad["expect"],
            "got": bad.get("got"),
        }
    return report


def failed_row(failure: FuzzFailureError | GuestLostError) -> Check:
    """The row the failure fails, named as the replay scenario names it (so that ``harness
    repro`` can tell the same failure from another): the disagreeing step's, the kernel
    log's for a report at the end of the example, else a row for the example as a whole."""
    index = failure.failing_step if isinstance(failure, FuzzFailureError) else None
    if index is not None:
        bad = failure.trace[index]
        got = bad.get("got") or {}
        return Check.effect(step_label(index, bad["step"]), bad["expect"],
                            {k: got.get(k) for k in bad["expect"]})  # fmt: skip
    if isinstance(failure, FuzzFailureError) and failure.splat_title:
        return Check(KERNEL_HEALTH, "no reports", str(failure), False, kind=EFFECT)
    return Check("fuzz example", "as the model predicts", str(failure), False)


def script_text(
    failure: FuzzFailureError | GuestLostError,
    plant: str | None,
    bundle: str,
    cdev: str | None = None,
) -> str:
    """The standalone reproducer script (``cdev``: tier 2's session on that VFIO cdev,
    which the replay scenario binds to vfio-pci first)."""
    steps = [{**s["step"], "expect": s["expect"]} for s in failure.trace]
    if cdev is None:
        session_import = "from harness.scenarios.guest.fuzz import Session"
        session_new = "Session(PLANT)"
    else:
        session_import = "from harness.scenarios.guest.fuzz_smmuv3 import SmmuSession"
        session_new = f"SmmuSession({cdev!r}, PLANT)"
    return _TEMPLATE.format(
        session_import=session_import,
        session_new=session_new,
        title=f"{len(steps)} steps",
        what=str(failure).replace('"""', "'''"),
        bundle=bundle,
        script=SCRIPT,
        plant=plant,
        steps=json.dumps(steps, indent=1),
    )


def write(
    failure: FuzzFailureError | GuestLostError,
    directory: Path,
    *,
    plant: str | None = None,
    prepared: Prepared | None = None,
    guest: Guest | None = None,
    open_fds: int = 0,
    cdev: str | None = None,
) -> dict[str, Path]:
    """Write the report, the script and (given the booted configuration) the bundle."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    report = failure_report(failure)
    path = directory / REPORT
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    written["report"] = path
    bundle_path = directory / repro.BUNDLE_FILE
    script = directory / SCRIPT
    script.write_text(script_text(failure, plant, str(bundle_path), cdev))
    script.chmod(0o755)
    written["script"] = script
    if prepared is not None:
        params = {
            "steps": steps_of(failure.trace),
            "plant": plant,
            "open_fds": open_fds,
            "failure": str(failure),
            "seed": 0,
        }
        scenario = get_registered(NAME if cdev is None else NAME_SMMUV3)
        verdict = Verdict(scenario.name)
        verdict.add(failed_row(failure))
        bundle = repro.scenario_bundle(scenario, params, prepared, guest, directory,
                                       verdict=verdict)  # fmt: skip
        written["bundle"] = repro.write_bundle(bundle, directory)
    return written
