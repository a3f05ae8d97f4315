"""``harness run``: run one scenario outside pytest and print its verdict."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from harness.artifacts import new_artifacts_dir
from harness.commands import name_value, report
from harness.scenarios.base import get, load_all
from harness.scenarios.runner import run_scenario
from harness.tier3.passthrough import add_host_device_option, apply_host_device


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios")
    parser.add_argument("--arch", choices=("x86_64", "arm64"))
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--qemu", help="QEMU binary (default: the installed one)")
    parser.add_argument(
        "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
        help="scenario parameter (JSON value), repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--viommu-opt", type=name_value, action="append", default=[], metavar="NAME=VALUE",
        help="override a vIOMMU option of the scenario's machine, e.g. flts=off (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
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
    artifacts = new_artifacts_dir(f"{scenario.name}-{arch}")
    verdict = run_scenario(
        scenario.name, arch, dict(args.param), qemu=args.qemu, accel=args.accel,
        artifacts=artifacts, viommu_options=dict(args.viommu_opt) or None, seed=args.seed,
    )  # fmt: skip
    return report(verdict, artifacts, args.json)
