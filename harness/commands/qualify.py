"""``harness qualify --matrix FILE``: run a qualification matrix as an avocado job.

Prints avocado's progress, then the per-variant table; writes avocado's results (JSON,
xUnit, HTML) and ``qualification.{json,html}`` into the job directory under
``--results`` (default ``artifacts/qualify``).  Exit status 0 when no variant failed
(skips are listed with their reason), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness.artifacts import artifacts_root
from harness.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--matrix", type=Path, required=True, help="matrix YAML file")
    parser.add_argument("--results", type=Path,
                        help="avocado results directory (default: artifacts/qualify)")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="run only variants whose id contains TEXT (repeatable)")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="variants run at once (each boots a guest; default 1)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fleet", type=Path, metavar="FLEET",
                        help="run the cells on a fleet's hosts (Dask; harness fleet)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from harness.qualify.matrix import load_matrix

    matrix = load_matrix(args.matrix)
    variants = [v for v in matrix.variants if not args.only or any(t in v.id for t in args.only)]
    if not variants:
        raise ConfigError(f"--only {' '.join(args.only)}: matches no variant of {args.matrix}")
    if args.list:
        if args.json:
            print(json.dumps([v.to_json() for v in variants], indent=1))
        else:
            for v in variants:
                opts = ", ".join(f"{k}={val}" for k, val in v.viommu_options.items()) or "defaults"
                print(f"{v.id:<60} {opts}")
        return 0
    if args.fleet is not None:
        from harness.commands.fleet import qualify_on_fleet

        return qualify_on_fleet(args, matrix, variants)
    try:
        from harness.qualify.job import run_job
    except ImportError as exc:
        raise ConfigError(
            f"avocado is not installed ({exc}): pip install -e '.[qualify]'"
        ) from None
    from harness.qualify.report import (
        collect,
        load_capabilities,
        text_table,
        totals,
        write_report,
    )

    results = args.results or artifacts_root() / "qualify"
    start = time.monotonic()
    outcome = run_job(variants, results, parallel=args.parallel)
    seconds = time.monotonic() - start
    rows = collect(outcome.logdir, variants)
    json_path, html_path = write_report(
        outcome.logdir, matrix.name, matrix.description, rows, seconds
    )
    if args.json:
        print(json_path.read_text())
    else:
        print(text_table(rows, load_capabilities(outcome.logdir)))
    counts = totals(rows)
    print(
        f"qualification {matrix.name}: {counts['passed']} passed, {counts['failed']} failed,"
        f" {counts['skipped']} skipped in {seconds:.0f} s\n  report: {html_path}"
        f"\n  avocado: {outcome.logdir / 'results.html'}"
    )
    return 1 if counts["failed"] else 0
