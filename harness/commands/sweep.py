"""``harness sweep``: remove what killed runs left (QEMUs, run directories with keys).

Every harness start does this already (CLI, pytest session, avocado job, benches); the
command only says so when there was nothing to sweep.
"""

from __future__ import annotations

import argparse

from harness.qemu.rundir import sweep


def configure(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    """Sweep (the CLI start did it already when ``args.swept`` is set); print what was done."""
    report = getattr(args, "swept", None) or sweep()
    if not report.line():
        print("[harness] nothing to sweep: no run directory of a dead run")
    return 1 if report.problems else 0
