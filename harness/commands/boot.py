"""``harness boot``: boot a guest with a vIOMMU and print how to reach it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from harness.artifacts import add_artifacts_option, new_artifacts_dir
from harness.commands import name_value
from harness.guest import Guest
from harness.images.command import add_kernel_options, kernel_choice
from harness.profiles import VIOMMU_FOR_ARCH, guest_machine, make_viommu
from harness.qemu.machine import MachineError
from harness.qemu.probe import adapt_machine, probe, resolve_binary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument("--viommu", choices=("vtd", "smmuv3", "none", "auto"), default="auto")
    parser.add_argument(
        "--viommu-opt", type=name_value, action="append", default=[], metavar="NAME=VALUE",
        help="vIOMMU option, e.g. flts=off, aw_bits=39, stage=2 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--device", action="append", default=[], help="device to add, e.g. edu (repeatable)"
    )
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--qemu", help="installed | 10 | 11 | a QEMU binary (default: installed)")
    parser.add_argument("--memory", type=int, default=2048, help="guest memory in MiB")
    parser.add_argument("--firmware", choices=("direct", "uefi"), default="direct")
    add_kernel_options(parser, path=True)
    add_artifacts_option(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", action="store_true", help="keep the guest until Ctrl-C")
    group.add_argument("--run", metavar="CMD", help="run CMD in the guest, exit with its status")


def run(args: argparse.Namespace) -> int:
    kind = VIOMMU_FOR_ARCH[args.arch] if args.viommu == "auto" else args.viommu
    viommu = make_viommu(kind, dict(args.viommu_opt))
    image = kernel_choice(args).image(args.arch)
    machine = guest_machine(
        image, viommu, args.device, accel=args.accel, memory_mb=args.memory,
        firmware=args.firmware,
    )  # fmt: skip
    binary = resolve_binary(args.arch, args.qemu)  # `11`, a build dir, or the installed one
    machine = adapt_machine(machine, probe(binary))
    artifacts = args.artifacts or new_artifacts_dir(f"boot-{args.arch}-{kind}")
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "kernel.json").write_text(json.dumps(image.kernel_identity, indent=1) + "\n")
    with Guest(machine, artifacts, ready_marker=image.ready_marker, qemu=binary) as guest:
        return serve(guest, args.run, args.keep)


def serve(guest: Guest, command: str | None, keep: bool) -> int:
    """Print how to reach ``guest``; then run ``command`` in it, or keep it until Ctrl-C."""
    print(f"guest up ({guest.vm.accel}, {guest.timings['boot_to_agent_s']:.1f}s)")
    print(f"  ssh:       {guest.ssh_command()}")
    print(f"  qmp:       {guest.vm.user_qmp_socket}")
    print(f"  hmp:       {guest.vm.hmp_socket}")
    print(f"  console:   {guest.vm.console_log}")
    print(f"  artifacts: {guest.artifacts}")
    if command is not None:
        result = guest.run(command)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.status
    if keep:
        print("keeping the guest alive; Ctrl-C to tear down", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):
                if (cause := guest.vm.health().cause) is not None:
                    raise MachineError(f"guest stopped: {cause}", guest.artifacts)
        except KeyboardInterrupt:
            print("tearing down")
    return 0
