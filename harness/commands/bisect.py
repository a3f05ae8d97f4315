"""``harness bisect``: find the commit of a kernel or QEMU tree that broke a scenario.

``harness bisect --good REV --bad REV --kernel-tree DIR [--arch A] SCENARIO|BUNDLE``
(or ``--qemu-tree DIR``) checks its input, then drives ``git bisect run`` in the tree
(``harness.bisect.session``) with ``harness bisect --step PLAN`` (``harness.bisect.step``)
as the test.  Exit status: 0 when a first bad commit was named, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.artifacts import artifacts_root, default_root, new_artifacts_dir
from harness.bisect import step
from harness.bisect.git import BisectInputError, Git, check_inputs
from harness.bisect.session import Bisection, Outcome
from harness.commands import add_scenario_options
from harness.images.arches import arch_spec
from harness.images.choice import KernelChoice
from harness.images.progress import format_duration
from harness.images.tree import check_tree
from harness.repro import read_bundle, resolve_scenario
from harness.scenarios.base import get
from harness.scenarios.runner import new_seed


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("test", nargs="?", metavar="SCENARIO|BUNDLE",
                        help="a scenario name, or a scenario's repro bundle (repro.json or its"
                             " directory)")  # fmt: skip
    parser.add_argument("--good", metavar="REV", help="a commit where the test passes")
    parser.add_argument("--bad", metavar="REV", help="a later commit where it fails")
    tree = parser.add_mutually_exclusive_group()
    tree.add_argument("--kernel-tree", type=Path, metavar="DIR", help="bisect this kernel tree")
    tree.add_argument("--qemu-tree", type=Path, metavar="DIR",
                      help="bisect this QEMU source tree (built in the harness cache)")  # fmt: skip
    parser.add_argument("--arch", choices=("x86_64", "arm64"))
    parser.add_argument("--qemu", help="QEMU for a kernel bisection: installed, 10, 11 or a binary")
    parser.add_argument("--kernel-flavor", default="default", metavar="F",
                        help="kernel flavor (images/kernel/F.config, e.g. debug)")  # fmt: skip
    add_scenario_options(parser, seed_help="seed for every step (default: one fresh one)")
    parser.add_argument("--jobs", type=int, help="build jobs (default: all cores)")
    parser.add_argument("--artifacts", type=Path, metavar="DIR",
                        help="where the bisection's directory goes (default: new, under the"
                             " artifacts root unless that is in the tree)")  # fmt: skip
    parser.add_argument("--no-verify-endpoints", action="store_true",
                        help="do not first check that --bad fails and --good passes")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument("--step", type=Path, help=argparse.SUPPRESS)  # git bisect run's command


def bisect_root(tree: Path, given: Path | None) -> Path:
    """Where the bisection's directory goes: ``given``, else the artifacts root unless that
    lies in the tree (a checkout would not clear it), else the per-user default."""
    inside = tree.resolve()
    if given is not None:
        if given.resolve().is_relative_to(inside):
            raise BisectInputError(
                f"--artifacts {given} is inside {tree}: its files would change the tree's"
                " state (and so the kernel's cache key) at every step"
            )
        return given.resolve()
    root = artifacts_root()
    return default_root() if root.resolve().is_relative_to(inside) else root


def _test(args: argparse.Namespace) -> dict[str, Any]:
    """The plan's test fields (scenario or bundle, arch, params) from the command line."""
    path = Path(args.test)
    if path.exists():
        bundle = read_bundle(path)
        if bundle.kind != "scenario":
            raise BisectInputError(
                f"{args.test}: a test bundle ({bundle.test.get('nodeid', '?')}) cannot be"
                " bisected (its pytest run boots its own kernel); bisect its scenario by name"
            )
        arch = str(bundle.scenario["arch"])
        if args.arch and args.arch != arch:
            raise BisectInputError(
                f"{args.test}: the bundle's arch is {arch}, not --arch {args.arch}"
            )
        if args.param or args.seed is not None or args.viommu_opt:
            raise BisectInputError(
                "--param / --seed / --viommu-opt: a bundle's recorded ones are used"
            )
        resolve_scenario(bundle)
        return {"bundle": str(path.resolve()), "arch": arch}
    scenario = get(args.test)
    arch = args.arch or scenario.arches[0]
    if arch not in scenario.arches:
        raise BisectInputError(
            f"scenario {scenario.name} runs on {', '.join(scenario.arches)}, not {arch}"
        )
    params = dict(args.param)
    params["seed"] = args.seed if args.seed is not None else params.get("seed", new_seed())
    return {"scenario": scenario.name, "arch": arch, "params": params,
            "viommu_options": dict(args.viommu_opt)}  # fmt: skip


def _check_tree(kind: str, tree: Path, arch: str, flavor: str) -> None:
    KernelChoice(flavor=flavor)  # an unknown flavor fails here, in one line
    if kind == "qemu":
        if not (tree / "configure").is_file():
            raise BisectInputError(f"{tree}: no configure script (not a QEMU source tree)")
        return
    check_tree(tree, arch_spec(arch).kernel_arch)  # KernelTreeError: not a kernel tree, ...


def print_outcome(outcome: Outcome, as_json: bool) -> None:
    """The end of a bisection for people (or as JSON)."""
    if as_json:
        print(json.dumps(outcome.__dict__, indent=1, default=str))
        return
    if outcome.found:
        print(f"first bad commit: {outcome.first_bad}  {outcome.subject}")
        for row in outcome.failing:
            print(f"failing row: {row['name']}: expected {row['expected']!r}, got {row['got']!r}")
        if not outcome.failing:
            print("failing row: not observed (--bad was not tested: --no-verify-endpoints)")
    else:
        print(f"no first bad commit: {outcome.reason}")
        for commit in outcome.candidates[:20]:
            print(f"  candidate {commit}")
    built = [format_duration(s["built_s"]) for s in outcome.steps if s.get("built_s") is not None]
    print(f"{len(outcome.steps)} steps in {format_duration(outcome.wall_s)}"
          f" (builds: {', '.join(built) or 'none'})")  # fmt: skip
    print(f"tree back on {outcome.restored}")
    print(f"log: {outcome.log}  (steps: {outcome.run_dir}/steps)")


def run(args: argparse.Namespace) -> int:
    if args.step is not None:
        return step.main(args.step)
    tree_arg = args.kernel_tree or args.qemu_tree
    if tree_arg is None or not args.good or not args.bad or not args.test:
        print("harness bisect: error: needs --good, --bad, --kernel-tree or --qemu-tree, and a"
              " SCENARIO or BUNDLE", file=sys.stderr)  # fmt: skip
        return 2
    kind = "kernel" if args.kernel_tree else "qemu"
    git = Git.open(tree_arg)
    check_inputs(git, args.good, args.bad)
    fields = _test(args)
    _check_tree(kind, git.tree, fields["arch"], args.kernel_flavor)
    label = Path(fields.get("scenario") or "bundle").name
    run_dir = new_artifacts_dir(f"bisect-{label}-{fields['arch']}",
                                bisect_root(git.tree, args.artifacts))  # fmt: skip
    plan = step.Plan(tree=str(git.tree), kind=kind, run_dir=str(run_dir), qemu=args.qemu,
                     accel=args.accel, jobs=args.jobs, kernel_flavor=args.kernel_flavor,
                     **fields)  # fmt: skip
    stream = sys.stderr if args.json else sys.stdout  # progress; --json keeps stdout for JSON
    bisection = Bisection(
        git, args.good, args.bad, plan, verify=not args.no_verify_endpoints,
        write=lambda text: print(text, end="", file=stream, flush=True),
    )  # fmt: skip
    outcome = bisection.run()
    print_outcome(outcome, args.json)
    return 0 if outcome.found else 1
