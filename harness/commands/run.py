"""``harness run``: run one scenario outside pytest and print its verdict."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from harness.scenarios.base import get, load_all
from harness.scenarios.runner import run_scenario


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
    parser.add_argument("--json", action="store_true", help="machine-readable output")


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
    get(args.scenario)  # unknown names fail before anything boots
    verdict = run_scenario(
        args.scenario, args.arch, dict(args.param), qemu=args.qemu, accel=args.accel
    )
    if args.json:
        print(json.dumps(verdict.to_json(), indent=1, default=str))
    else:
        print(verdict.table())
        print(verdict.summary())
    return 0 if verdict.passed else 1
