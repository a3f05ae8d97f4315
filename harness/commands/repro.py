"""``harness repro BUNDLE``: boot a failed run's exact configuration and re-run it.

Exit status: 0 when the replay passes, 1 when it fails (the verdict), 2 when the
bundle cannot be used (one line naming the problem).  A changed QEMU or kernel file
(sha256) is a warning unless ``--strict``; a missing one is an error.  The recorded
kernel is replayed unless ``--kernel PATH``, ``--kernel-tree DIR`` or
``--kernel-flavor F`` names another (its identity then replaces the recorded one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.images.command import add_kernel_options, kernel_choice
from harness.replay import replay_scenario, replay_test
from harness.repro import (
    Bundle,
    BundleError,
    check_files,
    read_bundle,
    resolve_scenario,
    with_kernel,
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="repro.json (or the artifacts dir holding it)")
    parser.add_argument("--keep", action="store_true",
                        help="after the scenario, keep the guest alive and print how to attach"
                             " (SSH, QMP, console) until Ctrl-C")  # fmt: skip
    parser.add_argument("--qemu", help="use this QEMU binary instead of the recorded one")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a QEMU / kernel / initramfs whose sha256 changed")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.add_argument("--artifacts", type=Path, help="artifacts directory for the replay")
    add_kernel_options(parser, path=True)


def _override_kernel(bundle: Bundle, args: argparse.Namespace) -> Bundle:
    """The bundle with the kernel the options name (unchanged when none is given)."""
    choice = kernel_choice(args)
    if choice.is_default:
        return bundle
    if bundle.kind != "scenario":
        raise BundleError(f"{bundle.path}: --kernel options replay scenario bundles only")
    arch = bundle.guests[0].machine.arch
    image = choice.image(arch, str(bundle.guests[0].image.get("flavor") or "default"))
    return with_kernel(bundle, image.kernel, image.kernel_identity, image.kernel_release)


def _error(message: str) -> int:
    print(f"harness repro: error: {message}", file=sys.stderr)
    return 2


def _describe(bundle: Bundle) -> str:
    record = bundle.guests[0]
    was = ", ".join(bundle.failed_checks) or bundle.outcome.get("error") or "?"
    if bundle.kind == "scenario":
        what = f"scenario {bundle.scenario['name']} on {bundle.scenario['arch']}"
    else:
        what = f"test {bundle.test['nodeid']}"
    return (
        f"replaying {what} (seed {bundle.seed}) with QEMU {record.qemu.get('version') or '?'}"
        f" and kernel {record.kernel.get('release') or '?'}; it failed with: {was}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        bundle = _override_kernel(read_bundle(args.bundle), args)
        if bundle.kind == "scenario":
            resolve_scenario(bundle)
        for warning in check_files(bundle, qemu=args.qemu, strict=args.strict):
            print(f"harness repro: warning: {warning}", file=sys.stderr)
    except BundleError as exc:
        return _error(str(exc))
    log = sys.stderr if args.json else sys.stdout
    print(_describe(bundle), file=log, flush=True)
    if bundle.kind == "test":
        status = replay_test(bundle, keep=args.keep, qemu=args.qemu)
        return status if status in (0, 1) else 2
    verdict = replay_scenario(
        bundle,
        qemu=args.qemu,
        keep=args.keep,
        artifacts=args.artifacts,
        write=lambda text: print(text, file=log, flush=True),
    )
    if args.json:
        print(json.dumps(verdict.to_json(), indent=1, default=str))
    else:
        print(verdict.table())
        print(verdict.summary())
    now = [c.name for c in verdict.failures]
    if now == bundle.failed_checks:
        print("same failing checks as the bundle" if now else "passes now", file=log)
    else:
        print(f"failing checks differ: bundle {bundle.failed_checks}, now {now}", file=log)
    return 0 if verdict.passed else 1
