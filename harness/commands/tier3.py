"""``harness tier3``: QEMU's own nesting, on a KVM host with nesting hardware or simulated.

- ``check --host-device BDF``: the host checks (device and group, KVM, iommufd, the host
  IOMMU's nesting capability through GET_HW_INFO); exit 0 when tier 3 can run.
- ``boot --host-device BDF [--keep | --run CMD]``: the passthrough guest, to poke at.
- ``run [--host-device BDF] [--arch A]``: ``tier3-passthrough`` on a real host; without a
  host device, the simulated scenario of the arch (``tier3-l2-smmuv3`` / ``tier3-l2-vtd``).

``--host-device`` is the same option as ``harness run``'s
(``harness.tier3.passthrough.add_host_device_option``).
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.commands import report
from harness.errors import ConfigError
from harness.host import host_arch
from harness.tier3.passthrough import HOST_DEVICE_ENV, add_host_device_option, apply_host_device

__all__ = ["HOST_DEVICE_ENV", "SIMULATED", "apply_host_device", "configure", "run"]

SIMULATED = {"arm64": "tier3-l2-smmuv3", "x86_64": "tier3-l2-vtd"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tier3_command", required=True)
    check = sub.add_parser("check", help="check this host for tier 3 (exit 0: it can run)")
    add_host_device_option(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    boot = sub.add_parser("boot", help="boot the passthrough guest and print how to reach it")
    add_host_device_option(boot)
    boot.add_argument("--arch", choices=("x86_64", "arm64"), help="default: this host's")
    boot.add_argument("--qemu", help="QEMU binary (default: the installed one)")
    group = boot.add_mutually_exclusive_group()
    group.add_argument("--keep", action="store_true", help="keep the guest until Ctrl-C")
    group.add_argument("--run", metavar="CMD", help="run CMD in the guest, exit with its status")
    run = sub.add_parser("run", help="run tier 3 (real host with --host-device, else simulated)")
    add_host_device_option(run)
    run.add_argument("--arch", choices=("x86_64", "arm64"), help="default: this host's / arm64")
    run.add_argument("--qemu", help="QEMU binary (default: the installed one)")
    run.add_argument("--seed", type=int, help="random seed (default: a fresh one, recorded)")
    run.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    handlers = {"check": _check, "boot": _boot, "run": _run}
    return handlers[args.tier3_command](args)


def _check(args: argparse.Namespace) -> int:
    from harness.tier3.hostcheck import check_host

    result = check_host(apply_host_device(args))
    if args.json:
        print(json.dumps(result.to_json(), indent=1, default=str))
    else:
        for row in result.rows:
            mark = "ok  " if row["ok"] else "FAIL"
            note = f"  ({row['note']})" if row["note"] else ""
            print(f"{mark}  {row['name']}: {row['got']}{note}")
        print("tier 3 can run" if result.skip_reason is None else f"cannot: {result.skip_reason}")
    return 0 if result.skip_reason is None else 1


def _host_arch(arch: str | None) -> str:
    return arch or host_arch()


def _boot(args: argparse.Namespace) -> int:
    from harness.artifacts import new_artifacts_dir
    from harness.commands.boot import serve
    from harness.guest import Guest
    from harness.scenarios.base import get
    from harness.scenarios.runner import PREPARE_HOOKS, prepare_machine

    if not apply_host_device(args):
        raise ConfigError("tier3 boot: --host-device BDF is required")
    arch = _host_arch(args.arch)
    scenario = get("tier3-passthrough")
    prepared = prepare_machine(scenario, arch, qemu=args.qemu, accel="kvm")
    prepared = PREPARE_HOOKS["tier3-passthrough"](prepared, lambda m: print(m, file=sys.stderr))
    artifacts = new_artifacts_dir(f"tier3-boot-{arch}")
    with Guest(
        prepared.machine, artifacts, ready_marker=prepared.ready_marker, qemu=prepared.binary
    ) as guest:
        return serve(guest, args.run, args.keep)


def _run(args: argparse.Namespace) -> int:
    from harness.artifacts import new_artifacts_dir
    from harness.scenarios.runner import run_scenario

    real = apply_host_device(args)
    arch = _host_arch(args.arch) if real else (args.arch or "arm64")
    name = "tier3-passthrough" if real else SIMULATED[arch]
    artifacts = new_artifacts_dir(f"{name}-{arch}")
    verdict = run_scenario(
        name,
        arch,
        None,
        qemu=args.qemu,
        accel="kvm" if real else "auto",
        artifacts=artifacts,
        seed=args.seed,
    )
    return report(verdict, artifacts, args.json)
