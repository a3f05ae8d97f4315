"""The image API: ``ensure()`` a guest image (build on a cold cache) or ``lookup()`` one."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.images import kernel as kernel_recipe
from harness.images import rootfs as rootfs_recipe
from harness.images.arches import READY_MARKER, ArchSpec, arch_spec
from harness.images.cache import Cache, content_key, read_meta
from harness.images.errors import ImageBuildError, ImageNotBuiltError
from harness.images.progress import Progress, StreamProgress
from harness.images.recipe import Recipe, short_key
from harness.images.steps import log_tail


@dataclass(frozen=True)
class GuestImage:
    """A built guest: kernel, initramfs and what a machine needs to boot and recognise it."""

    arch: str
    flavor: str
    key: str
    kernel: Path
    initramfs: Path
    config: Path
    logs: dict[str, Path]
    console: str
    cmdline: tuple[str, ...]
    ready_marker: str = READY_MARKER
    kernel_release: str = ""
    uefi_firmware: Path | None = None
    packages: Path | None = None
    sizes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON that ``images path`` prints."""
        data: dict[str, Any] = {
            "arch": self.arch,
            "flavor": self.flavor,
            "key": self.key,
            "kernel": str(self.kernel),
            "rootfs": str(self.initramfs),
            "initramfs": str(self.initramfs),
            "config": str(self.config),
            "logs": {name: str(path) for name, path in self.logs.items()},
            "console": self.console,
            "cmdline": list(self.cmdline),
            "ready_marker": self.ready_marker,
            "kernel_release": self.kernel_release,
            "packages": str(self.packages) if self.packages else None,
            "sizes": self.sizes,
        }
        if self.uefi_firmware is not None:
            data["uefi_firmware"] = str(self.uefi_firmware)
        return data


@dataclass(frozen=True)
class Plan:
    """The artifact names (kind, key) an image of one arch and flavor needs right now."""

    spec: ArchSpec
    flavor: str
    kernel_name: str
    rootfs_name: str
    fragments: list[tuple[str, str]]
    source: kernel_recipe.KernelSource

    @property
    def key(self) -> str:
        """The image's key: a hash of its kernel's and root filesystem's keys."""
        return content_key([self.kernel_name, self.rootfs_name])[:16]


def plan(arch: str, flavor: str = "default", recipe: Recipe | None = None) -> Plan:
    """Compute the cache keys of an image from its recipe (fast: no build)."""
    recipe = recipe or Recipe()
    spec = arch_spec(arch)
    source = kernel_recipe.find_source()
    kernel_inputs = recipe.kernel_inputs(spec, source.version, kernel_recipe.toolchain(spec))
    rootfs_inputs = recipe.rootfs_inputs(spec, flavor)
    return Plan(
        spec=spec,
        flavor=flavor,
        kernel_name=f"{spec.name}-{short_key(kernel_inputs)}",
        rootfs_name=f"{spec.name}-{flavor}-{short_key(rootfs_inputs)}",
        fragments=recipe.fragments(spec),
        source=source,
    )


def _image(the_plan: Plan, kernel_dir: Path, rootfs_dir: Path) -> GuestImage:
    spec = the_plan.spec
    kernel_meta = read_meta(kernel_dir)
    rootfs_meta = read_meta(rootfs_dir)
    return GuestImage(
        arch=spec.name,
        flavor=the_plan.flavor,
        key=the_plan.key,
        kernel=kernel_dir / spec.image_target,
        initramfs=rootfs_dir / rootfs_recipe.INITRAMFS,
        config=kernel_dir / kernel_recipe.CONFIG,
        logs={"kernel": kernel_dir / "build.log", "rootfs": rootfs_dir / "build.log"},
        console=spec.console,
        cmdline=spec.cmdline,
        kernel_release=str(kernel_meta.get("release", "")),
        uefi_firmware=spec.uefi_firmware,
        packages=rootfs_dir / rootfs_recipe.MANIFEST,
        sizes={"kernel": int(kernel_meta["size"]), "initramfs": int(rootfs_meta["size"])},
    )


def lookup(
    arch: str, flavor: str = "default", *, recipe: Recipe | None = None, cache: Cache | None = None
) -> GuestImage:
    """The cached image for the current recipe; ImageNotBuiltError when it is not built."""
    cache = cache or Cache()
    the_plan = plan(arch, flavor, recipe)
    kernel_dir = cache.lookup("kernel", the_plan.kernel_name)
    rootfs_dir = cache.lookup("rootfs", the_plan.rootfs_name)
    if kernel_dir is None or rootfs_dir is None:
        missing = [
            name
            for name, found in (
                (f"kernel {the_plan.kernel_name}", kernel_dir),
                (f"rootfs {the_plan.rootfs_name}", rootfs_dir),
            )
            if found is None
        ]
        raise ImageNotBuiltError(
            f"{arch}/{flavor} image not built ({', '.join(missing)} missing in {cache.root}):"
            f" run `python -m harness images build --arch {arch} --flavor {flavor}`"
        )
    return _image(the_plan, kernel_dir, rootfs_dir)


def ensure(
    arch: str,
    flavor: str = "default",
    progress: Progress | None = None,
    *,
    jobs: int | None = None,
    recipe: Recipe | None = None,
    cache: Cache | None = None,
) -> GuestImage:
    """The image for the current recipe: returned at once when cached, else built first.

    Safe to call from several processes at once (pytest-xdist workers): builders of the
    same artifact wait for the first and reuse its result. Progress goes to stderr unless
    another ``progress`` is given.
    """
    recipe = recipe or Recipe()
    cache = cache or Cache()
    progress = progress or StreamProgress()
    jobs = jobs or os.cpu_count() or 1
    the_plan = plan(arch, flavor, recipe)
    spec = the_plan.spec
    started = time.monotonic()
    try:
        rootfs_dir = cache.build(
            "rootfs",
            the_plan.rootfs_name,
            lambda staging, log: rootfs_recipe.build_rootfs(
                spec, flavor, the_plan.rootfs_name, recipe, staging, log, progress
            ),
            progress,
            remove_stale=rootfs_recipe.remove_staging,
        )
        kernel_dir = cache.lookup("kernel", the_plan.kernel_name)
        if kernel_dir is None:
            source_tree = kernel_recipe.extract_source(cache, the_plan.source, progress)
            kernel_dir = cache.build(
                "kernel",
                the_plan.kernel_name,
                lambda staging, log: kernel_recipe.build_kernel(
                    spec,
                    the_plan.kernel_name,
                    the_plan.fragments,
                    source_tree,
                    cache,
                    staging,
                    log,
                    progress,
                    jobs,
                ),
                progress,
            )
    except ImageBuildError as exc:
        progress.failed(str(exc), log_tail(exc.log) if exc.log else exc.tail)
        raise
    image = _image(the_plan, kernel_dir, rootfs_dir)
    if time.monotonic() - started > 1:
        progress.message(f"{arch}/{flavor} image {image.key} ready")
    return image
