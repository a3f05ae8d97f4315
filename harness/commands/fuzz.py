"""``harness fuzz``: boot one guest and fuzz the nesting uAPI in it until a budget ends.

``--tier 1`` is the IOMMUFD_TEST mock (both arches); ``--tier 2`` the edu device behind
QEMU's SMMUv3 (arm64), whose ID registers the host reads over QMP for the model.  The
debug kernel flavor is used by default when it is built (``images build --kernel-flavor
debug``); otherwise the default kernel, with a message saying so.  The example database
lives under the harness cache (``fuzz/<arch>-tier<N>``) so a rerun replays saved failures
first; the seed is printed and recorded.  A failure leaves ``fuzz-failure.json``,
``fuzz-repro.py`` and a repro bundle (``harness repro DIR``) in the artifacts directory.
Exit status 0 when nothing was found, 1 when something was.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from harness import images
from harness.artifacts import add_artifacts_option, new_artifacts_dir
from harness.cachedir import cache_dir
from harness.errors import ConfigError, HarnessError
from harness.fuzz import replay as fuzz_replay
from harness.fuzz import reproducer
from harness.fuzz.rules import FuzzMachine, NestingMachine
from harness.fuzz.runner import CHUNK, STEPS_PER_EXAMPLE, GuestExecutor, fuzz
from harness.fuzz.smmuv3_hw import SmmuObserver
from harness.fuzz.smmuv3_rules import SmmuMachine
from harness.guest import Guest
from harness.scenarios.base import Prepared, Verdict
from harness.scenarios.guest.fuzz import PLANTS
from harness.scenarios.guest.fuzz_smmuv3 import PLANTS as SMMUV3_PLANTS
from harness.scenarios.guest.smmuv3 import stream_id
from harness.scenarios.runner import PREPARE_HOOKS, new_seed, prepare_machine
from harness.scenarios.smmuv3 import bind_edu
from harness.scenarios.tier1 import preflight

SUMMARY = "fuzz-summary.json"
#: seconds delta debugging may replay subsets of a failure in the guest (hypothesis has
#: its own 120): a 93-step kernel-WARN trace took 120 s to reach 34 steps
REDUCE_LIMIT_S = 600.0
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """``90s``, ``10m``, ``1h`` or plain seconds; ConfigError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--budget {text!r}: expected a duration like 90s, 10m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=("x86_64", "arm64"), required=True)
    parser.add_argument("--tier", type=int, choices=(1, 2), default=1,
                        help="1: the IOMMUFD_TEST mock; 2: emulated SMMUv3 (arm64)")  # fmt: skip
    parser.add_argument("--budget", default="10m", help="how long to search (90s, 10m, 1h)")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: a fresh one)")
    parser.add_argument(
        "--kernel-flavor", default=None, metavar="F",
        help="guest kernel flavor (default: debug when built, else default)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=STEPS_PER_EXAMPLE,
                        help="steps per example (one fresh /dev/iommu each)")  # fmt: skip
    parser.add_argument("--plant", help="a planted executor bug to find (tests the fuzzer)")
    parser.add_argument(
        "--walk-into-known-bugs", action="store_true",
        help="do not steer around the kernel bugs the fuzzer found (docs/FUZZ.md): to check a fix",
    )  # fmt: skip
    parser.add_argument(
        "--database", type=Path,
        help="hypothesis example database (default: under the harness cache)",
    )  # fmt: skip
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--qemu", help="QEMU binary (default: the installed one)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_artifacts_option(parser)


def choose_kernel(arch: str, flavor: str | None, log: Any) -> tuple[Path | None, str]:
    """(kernel image or None for the default, the flavor used); debug falls back if unbuilt."""
    wanted = flavor or "debug"
    if wanted == "default":
        return None, "default"
    try:
        image = images.lookup(arch, kernel_flavor=wanted)
    except HarnessError as exc:
        if flavor is not None:  # asked for explicitly: build it
            return images.ensure(arch, kernel_flavor=wanted).kernel, wanted
        log(f"fuzz: the {wanted} kernel flavor is not built ({str(exc).splitlines()[0]});"
            f" using the default kernel")  # fmt: skip
        return None, "default"
    return image.kernel, wanted


def run_fuzz(
    arch: str,
    *,
    tier: int = 1,
    budget: float,
    seed: int,
    kernel_flavor: str | None = None,
    steps: int = STEPS_PER_EXAMPLE,
    plant: str | None = None,
    walk_into_known_bugs: bool = False,
    database: Path | None = None,
    artifacts: Path | None = None,
    accel: str = "auto",
    qemu: str | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Boot, fuzz, write the summary (and a failure's reproducer); the summary."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if tier == 2 and arch != "arm64":
        raise ConfigError(f"--tier 2 is QEMU's SMMUv3 with nesting: arm64 only, not {arch}")
    plants = PLANTS if tier == 1 else SMMUV3_PLANTS
    if plant is not None and plant not in plants:
        raise ConfigError(f"--plant {plant!r}: tier {tier}'s plants are {', '.join(plants)}")
    name = fuzz_replay.NAME if tier == 1 else fuzz_replay.NAME_SMMUV3
    scenario = fuzz_replay.get_registered(name)
    kernel, flavor = choose_kernel(arch, kernel_flavor, log)
    prepared: Prepared = prepare_machine(scenario, arch, qemu=qemu, accel=accel, kernel=kernel)
    if (hook := PREPARE_HOOKS.get(name)) is not None:
        prepared = hook(prepared, log)
    artifacts = artifacts or new_artifacts_dir(f"fuzz-{arch}-tier{tier}")
    artifacts.mkdir(parents=True, exist_ok=True)
    database = database or cache_dir("fuzz") / f"{arch}-tier{tier}"
    log(f"fuzz: {arch} tier {tier}, seed {seed}, budget {budget:.0f}s, kernel {flavor};"
        f" artifacts {artifacts}; example database {database}")  # fmt: skip
    guest = Guest(prepared.machine, artifacts, ready_marker=prepared.ready_marker,
                  qemu=prepared.binary, name="fuzz")  # fmt: skip
    with guest:
        cdev: str | None = None
        observer: SmmuObserver | None = None
        rules: type[FuzzMachine] = NestingMachine
        facts: dict[str, Any] = {}
        if tier == 1:
            preflight(guest)
            executor = GuestExecutor(guest, plant)
            facts = {"avoid_known_bugs": not walk_into_known_bugs}
        else:
            cdev, observer = tier2_setup(guest)
            facts = {"facts": observer.facts()}
            rules = SmmuMachine
            executor = GuestExecutor(guest, plant, cdev=cdev, hardware=observer)
        result = fuzz(executor, budget=budget, seed=seed, database=database, steps=steps,
                      chunk=CHUNK, log=log, rules=rules, facts=facts,
                      reduce_limit=REDUCE_LIMIT_S)  # fmt: skip
        summary = result.summary()
        summary.update(
            arch=arch, tier=tier, kernel_flavor=flavor, plant=plant, accel=guest.vm.accel,
            walk_into_known_bugs=walk_into_known_bugs,
            artifacts=str(artifacts), database=str(database),
        )  # fmt: skip
        if observer is not None:
            summary["smmu_id_regs"] = {k: hex(v) for k, v in facts["facts"].raw.items()}
            summary["ste_reads"] = observer.ste_reads
        found = result.failure or result.lost
        if found is not None:
            written = reproducer.write(
                found, artifacts, plant=plant, prepared=prepared, guest=guest,
                open_fds=getattr(found, "open_fds", 0), cdev=cdev,
            )  # fmt: skip
            summary["reproducer"] = {k: str(v) for k, v in written.items()}
            summary["reproducer_steps"] = len(found.trace)
    (artifacts / SUMMARY).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (artifacts / "coverage.txt").write_text(result.coverage.text() + "\n")
    return summary


def tier2_setup(guest: Guest) -> tuple[str, SmmuObserver]:
    """Bind edu to vfio-pci; its cdev, and the host's view of the SMMU for its stream."""
    setup = Verdict("fuzz tier 2 set-up")
    bound = bind_edu(guest, setup)
    if bound is None:
        raise HarnessError(
            "tier 2 set-up failed: " + "; ".join(f"{c.name}: {c.got}" for c in setup.failures)
        )
    assert guest.vm.qmp is not None
    return bound[1], SmmuObserver(guest.vm.qmp, stream_id(bound[0]))


def report(summary: dict[str, Any]) -> str:
    """The summary for humans."""
    contract = summary["contract"]
    lines = [
        f"fuzz {summary['arch']} tier {summary['tier']} (kernel {summary['kernel_flavor']},"
        f" {summary['accel']}): seed {summary['seed']}",
        f"  {summary['steps']} steps in {summary['elapsed_s']}s ({summary['steps_per_s']}/s),"
        f" {summary['examples']} examples, {summary['distinct_rule_pairs']} rule pairs,"
        f" {summary['distinct_ioctl_outcomes']} ioctl x outcome",
        "  coverage (ioctl: outcome x count):",
    ]
    for row in summary["ioctl_outcomes"]:
        outs = ", ".join(f"{o} x{n}" for o, n in row["outcomes"].items())
        lines.append(f"    {row['ioctl']}: {outs}")
    lines.append(
        f"  errno contract: {len(contract['reached'])} rows reached,"
        f" {len(contract['never_reached'])} never reached"
    )
    for row in contract["never_reached"]:
        lines.append(f"    never: {row['ioctl']} {row['errno']} ({row['case']})")
    if summary["found"]:
        lines.append(f"  FOUND: {summary['failure'] or summary['guest_lost'] or summary['error']}")
        for name, path in (summary.get("reproducer") or {}).items():
            lines.append(f"    {name}: {path}")
    else:
        lines.append("  nothing found")
    lines.append(f"  artifacts: {summary['artifacts']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    budget = parse_budget(args.budget)
    seed = args.seed if args.seed is not None else new_seed()
    summary = run_fuzz(
        args.arch, tier=args.tier, budget=budget, seed=seed, kernel_flavor=args.kernel_flavor,
        steps=args.steps, plant=args.plant, walk_into_known_bugs=args.walk_into_known_bugs,
        database=args.database, artifacts=args.artifacts,
        accel=args.accel, qemu=args.qemu,
    )  # fmt: skip
    print(json.dumps(summary, indent=1, default=str) if args.json else report(summary))
    return 1 if summary["found"] else 0
