"""``harness run``: run one scenario outside pytest and print its verdict."""

from __future__ import annotations

import argparse
import json
import sys

from harness.artifacts import add_artifacts_option, new_artifacts_dir
from harness.commands import add_scenario_options, report
from harness.images.command import add_kernel_options, kernel_choice
from harness.scenarios.base import get, load_all
from harness.scenarios.runner import run_scenario
from harness.tier3.passthrough import add_host_device_option, apply_host_device


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--arch", choices=("x86_64", "arm64"))
    parser.add_argument("--qemu", help="installed | 10 | 11 | a QEMU binary (default: installed)")
    add_scenario_options(parser, seed_help="random seed (default: a fresh one, recorded)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_kernel_options(parser, path=True)
    add_artifacts_option(parser)
    add_host_device_option(parser)


def run(args: argparse.Namespace) -> int:
    if args.list:
        scenarios = [s.describe() for s in sorted(load_all().values(), key=lambda s: s.name)]
        if args.json:
            print(json.dumps(scenarios, indent=1))
        else:
            for s in scenarios:
                arches = ",".join(s["arches"])
                print(f"{s['name']:<32} tier {s['tier']}  {s['viommu'] or '-':<7} {arches:<14} "
                      f"{s['description']}")  # fmt: skip
        return 0
    if not args.scenario:
        print("harness run: error: name a scenario (or --list)", file=sys.stderr)
        return 2
    apply_host_device(args)
    scenario = get(args.scenario)  # unknown names fail before anything boots
    arch = args.arch or scenario.arches[0]
    kernel = kernel_choice(args)  # bad kernel options fail before anything is made
    artifacts = args.artifacts or new_artifacts_dir(f"{scenario.name}-{arch}")
    verdict = run_scenario(
        scenario.name, arch, dict(args.param), qemu=args.qemu, accel=args.accel,
        artifacts=artifacts, viommu_options=dict(args.viommu_opt) or None, seed=args.seed,
        kernel=kernel.path, kernel_tree=kernel.tree, kernel_flavor=kernel.flavor,
    )  # fmt: skip
    return report(verdict, artifacts, args.json)
