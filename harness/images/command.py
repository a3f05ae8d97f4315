"""``python -m harness images {build,path,gc}``: build, locate or prune the guest images."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from types import FrameType

from harness.errors import ConfigError
from harness.images.arches import ARCHES
from harness.images.cache import Cache
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
    path = actions.add_parser("path", help="print the cached image's paths as JSON")
    path.add_argument("--arch", required=True, choices=list(ARCHES))
    path.add_argument("--flavor", default="default", help="root filesystem flavor")
    gc = actions.add_parser("gc", help="delete cached artifacts the current recipes do not use")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")


def run(args: argparse.Namespace) -> int:
    """Run one ``images`` action; errors are HarnessError subclasses the CLI prints."""
    action: str = args.action
    if action == "build":
        return _build(args)
    if action == "path":
        print(json.dumps(lookup(args.arch, args.flavor).to_json(), indent=2))
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
        image = ensure(arch, args.flavor, progress, jobs=args.jobs)
        took = format_duration(time.monotonic() - started)
        progress.message(
            f"{arch}/{args.flavor} {image.key} ({took}): kernel {image.kernel}"
            f" ({image.sizes['kernel'] / 2**20:.1f} MiB), initramfs {image.initramfs}"
            f" ({image.sizes['initramfs'] / 2**20:.0f} MiB)"
        )


def _gc(args: argparse.Namespace) -> int:
    recipe = Recipe()
    cache = Cache()
    keep: set[tuple[str, str]] = set()
    for arch in ARCHES:
        for flavor in recipe.flavors():
            the_plan = plan(arch, flavor, recipe)
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
