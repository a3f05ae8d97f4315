"""``python -m harness images {build,path,gc}``: build, locate or prune the guest images."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from harness.errors import ConfigError
from harness.images.arches import ARCHES
from harness.images.cache import Cache
from harness.images.choice import KernelChoice
from harness.images.kernel import find_source, source_artifact_name
from harness.images.pipeline import ensure, lookup, plan
from harness.images.progress import StreamProgress, format_duration
from harness.images.recipe import Recipe


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``images`` subcommands to the CLI."""
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build the images a cold cache lacks (else no-op)")
    build.add_argument("--arch", required=True, choices=[*ARCHES, "all"])
    build.add_argument("--flavor", default="default", help="root filesystem flavor")
    build.add_argument("--jobs", type=int, default=None, help="make -j (default: CPU count)")
    add_kernel_options(build)
    path = actions.add_parser("path", help="print the cached image's paths as JSON")
    path.add_argument("--arch", required=True, choices=list(ARCHES))
    path.add_argument("--flavor", default="default", help="root filesystem flavor")
    add_kernel_options(path)
    gc = actions.add_parser("gc", help="delete cached artifacts the current recipes do not use")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")


def add_kernel_options(parser: argparse.ArgumentParser, *, path: bool = False) -> None:
    """``--kernel-tree DIR`` and ``--kernel-flavor F`` (plus ``--kernel PATH`` if ``path``)."""
    parser.add_argument(
        "--kernel-tree", type=Path, metavar="DIR",
        help="build the guest kernel from this source tree (out of tree; keyed by its state)",
    )  # fmt: skip
    parser.add_argument(
        "--kernel-flavor", default="default", metavar="F",
        help="kernel flavor: default, or debug (KASAN, lockdep, UBSAN, ...)",
    )  # fmt: skip
    if path:
        parser.add_argument(
            "--kernel", type=Path, metavar="PATH", help="boot this kernel image instead"
        )


def kernel_choice(args: argparse.Namespace) -> KernelChoice:
    """The :class:`KernelChoice` of a command's ``add_kernel_options`` arguments."""
    return KernelChoice(
        path=getattr(args, "kernel", None), tree=args.kernel_tree, flavor=args.kernel_flavor
    )


def run(args: argparse.Namespace) -> int:
    """Run one ``images`` action; errors are HarnessError subclasses the CLI prints."""
    action: str = args.action
    if action == "build":
        return _build(args)
    if action == "path":
        image = lookup(
            args.arch,
            args.flavor,
            kernel_tree=args.kernel_tree,
            kernel_flavor=args.kernel_flavor,
        )
        print(json.dumps(image.to_json(), indent=2))
        return 0
    return _gc(args)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _build(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    # SIGTERM (CI timeouts, kill) unwinds like Ctrl-C: builds stop, staging is removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _build_each(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _build_each(args: argparse.Namespace) -> None:
    arches = list(ARCHES) if args.arch == "all" else [args.arch]
    progress = StreamProgress()
    for arch in arches:
        started = time.monotonic()
        image = ensure(
            arch,
            args.flavor,
            progress,
            jobs=args.jobs,
            kernel_tree=args.kernel_tree,
            kernel_flavor=args.kernel_flavor,
        )
        took = format_duration(time.monotonic() - started)
        kernel_flavor = "" if args.kernel_flavor == "default" else f" kernel {args.kernel_flavor}"
        progress.message(
            f"{arch}/{args.flavor}{kernel_flavor} {image.key} ({took}): kernel {image.kernel}"
            f" ({image.sizes['kernel'] / 2**20:.1f} MiB), initramfs {image.initramfs}"
            f" ({image.sizes['initramfs'] / 2**20:.0f} MiB)"
        )


def _gc(args: argparse.Namespace) -> int:
    recipe = Recipe()
    cache = Cache()
    keep: set[tuple[str, str]] = set()
    for arch in ARCHES:
        for flavor in recipe.flavors():
            for kernel_flavor in recipe.kernel_flavors():
                the_plan = plan(arch, flavor, recipe, kernel_flavor=kernel_flavor)
                keep.add(("kernel", the_plan.kernel_name))
                keep.add(("rootfs", the_plan.rootfs_name))
    current_source = source_artifact_name(find_source())
    removed = 0
    for kind in ("kernel", "rootfs", "src"):
        for artifact in cache.entries(kind):
            if kind == "src":
                wanted = artifact.name == current_source
            else:
                wanted = (kind, artifact.name) in keep
            if wanted:
                continue
            print(f"{'would delete' if args.dry_run else 'deleting'} {artifact}", file=sys.stderr)
            removed += 1
            if not args.dry_run:
                with cache.lock(f"{kind}-{artifact.name}"):
                    shutil.rmtree(artifact)
    print(f"{removed} artifact(s) {'to delete' if args.dry_run else 'deleted'}", file=sys.stderr)
    return 0
