"""Command line: ``python -m harness {images,boot,run,tier3,repro,qualify,sweep,fleet}``.

Each subcommand lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; this module only dispatches and turns ``HarnessError`` into a
one-line message and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from harness.errors import HarnessError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "images": ("harness.images.command", "build or locate guest kernels and root filesystems"),
    "boot": ("harness.commands.boot", "boot a guest with a vIOMMU and print how to reach it"),
    "run": ("harness.commands.run", "run one scenario and print its verdict"),
    "tier3": ("harness.commands.tier3", "QEMU's own nesting: host checks, passthrough boot, run"),
    "repro": ("harness.commands.repro", "boot a failed run's configuration from its repro bundle"),
    "qualify": ("harness.commands.qualify", "run the avocado qualification job over a matrix"),
    "sweep": ("harness.commands.sweep", "remove QEMUs and run directories that killed runs left"),
    "kselftest": (
        "harness.commands.kselftest",
        "run the kernel's iommu and VFIO selftests in guests",
    ),
    "rings": ("harness.commands.rings", "print a running guest's vIOMMU queues, read over QMP"),
    "fleet": ("harness.commands.fleet", "hosts on Dask for qualify --fleet: probe, deploy"),
    "fuzz": ("harness.commands.fuzz", "stateful fuzzing of the nesting uAPI in a guest"),
    "bisect": ("harness.commands.bisect", "find the kernel or QEMU commit that broke a scenario"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line and exits 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="harness", description="vIOMMU nesting test harness")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)
        p.set_defaults(_handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from harness.qemu.rundir import sweep

    args.swept = sweep()  # every start: what a killed run left (one line when anything)
    try:
        status: int = args._handler(args)
        return status
    except HarnessError as exc:
        print(f"harness {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"harness {args.command}: interrupted", file=sys.stderr)
        return 130
