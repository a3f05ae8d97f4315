"""``harness fleet {probe,deploy}`` and ``harness qualify --fleet``: the matrix on many hosts.

- ``probe FLEET``: start the fleet's Dask cluster (scheduler here, a worker per host over
  SSH, TLS) and print what each host can run: arch, kernel, QEMU per guest arch, KVM
  (the harness's own verdict), ``/dev/iommu``, tier 3 and labels.  Exit 1 if a host is
  down.
- ``deploy FLEET``: build a wheel of this checkout and install it with the pinned
  ``distributed`` into each host's prefix; copy the guest images it lacks (by hash).
- ``qualify --matrix M --fleet FLEET``: see ``harness.fleet.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.artifacts import artifacts_root


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="fleet_command", required=True)
    probe = sub.add_parser("probe", help="start the cluster and print each host's capabilities")
    probe.add_argument("fleet", type=Path, help="fleet YAML file")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    deploy = sub.add_parser("deploy", help="install this checkout on every host of the fleet")
    deploy.add_argument("fleet", type=Path, help="fleet YAML file")
    deploy.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="only this host (repeatable)")  # fmt: skip
    deploy.add_argument("--arch", action="append", default=[], choices=("x86_64", "arm64"),
                        help="guest images to copy (default: every arch cached here)")  # fmt: skip
    deploy.add_argument("--no-images", action="store_true", help="do not copy guest images")


def run(args: argparse.Namespace) -> int:
    from harness.fleet.spec import load_fleet

    fleet = load_fleet(args.fleet)
    if args.fleet_command == "probe":
        return _probe(fleet, args.json)
    from harness.fleet.deploy import deploy

    hosts = [fleet.host(n) for n in args.host] or list(fleet.hosts)
    arches = None if not args.arch else list(args.arch)
    failed = deploy(fleet, hosts, arches=arches, images=not args.no_images)
    return 1 if failed else 0


def _probe(fleet: Any, as_json: bool) -> int:
    from harness.fleet.capabilities import table
    from harness.fleet.cluster import probe

    caps, down = asyncio.run(probe(fleet))
    if as_json:
        data = {
            "hosts": {n: {**c.to_json(), "resources": c.resources()} for n, c in caps.items()},
            "down": down,
        }
        print(json.dumps(data, indent=1))
    else:
        print(table([caps[h.name] for h in fleet.hosts if h.name in caps]))
        for name, why in down.items():
            print(f"down: {why if why.startswith(name + ':') else f'{name}: {why}'}")
    return 1 if down else 0


def qualify_on_fleet(args: argparse.Namespace, matrix: Any, variants: Sequence[Any]) -> int:
    """``harness qualify --fleet``: run, merge, print; the exit status (1: anything wrong)."""
    from harness.fleet.merge import exit_status, write_results
    from harness.fleet.run import run_fleet
    from harness.fleet.spec import load_fleet
    from harness.qualify.report import collect, text_table, totals

    fleet = load_fleet(args.fleet)
    stamp = time.strftime("%Y-%m-%dT%H.%M.%S")
    root = (args.results or artifacts_root() / "qualify") / f"fleet-{fleet.name}-{stamp}"
    outcome = run_fleet(fleet, variants, root)
    json_path, html_path = write_results(
        root, matrix.name, matrix.description, outcome.results, outcome.seconds, outcome.lost
    )
    rows = collect(root, [r.variant for r in outcome.results])
    print(json_path.read_text() if args.json else text_table(rows))
    counts = totals(rows)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k in ("passed", "failed"))
    print(f"qualification {matrix.name} on fleet {fleet.name}: {summary} in"
          f" {outcome.seconds:.0f} s")  # fmt: skip
    for name, why in outcome.lost.items():
        print(f"  host {name}: {why}")
    for key, value in outcome.overhead.items():
        print(f"  {key}: {value:.2f}")
    print(f"  report: {html_path}\n  junit: {root / 'results.xml'}\n  cells: {root / 'results'}")
    return exit_status(outcome.results, outcome.lost)
