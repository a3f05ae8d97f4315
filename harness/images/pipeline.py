"""The image API: ``ensure()`` a guest image (build on a cold cache) or ``lookup()`` one."""

from __future__ import annotations

import hashlib
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
from harness.images.tree import TreeState, check_tree, tree_state


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
    kernel_flavor: str = "default"
    kernel_identity: dict[str, Any] = field(default_factory=dict)

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
            "kernel_flavor": self.kernel_flavor,
            "kernel_identity": self.kernel_identity,
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
    kernel_flavor: str = "default"
    tree: TreeState | None = None

    @property
    def kbuild(self) -> str:
        """The persistent build directory's name under ``kbuild/``: one per source, arch
        and kernel flavor (the package's default flavor keeps ``kbuild/<arch>``)."""
        suffix = "" if self.kernel_flavor == "default" else f"-{self.kernel_flavor}"
        if self.tree is None:
            return f"{self.spec.name}{suffix}"
        where = content_key(str(self.tree.path))[:8]
        return f"tree-{self.tree.path.name}-{where}-{self.spec.name}-{self.kernel_flavor}"

    def kernel_identity(self) -> dict[str, Any]:
        """Source, commit, dirty hash and kernel flavor of the kernel this plan builds."""
        if self.tree is not None:
            identity = self.tree.identity()
        else:
            identity = {
                "source": f"{self.source.package} {self.source.version}",
                "package": self.source.package,
                "version": self.source.version,
                "commit": "",
                "dirty": "",
            }
        return {**identity, "kernel_flavor": self.kernel_flavor}

    @property
    def key(self) -> str:
        """The image's key: a hash of its kernel's and root filesystem's keys."""
        return content_key([self.kernel_name, self.rootfs_name])[:16]


def plan(
    arch: str,
    flavor: str = "default",
    recipe: Recipe | None = None,
    *,
    kernel_tree: Path | None = None,
    kernel_flavor: str = "default",
) -> Plan:
    """Compute the cache keys of an image from its recipe (fast: no build).

    With ``kernel_tree`` the kernel comes from that tree, keyed by its state (commit and
    uncommitted changes); ``kernel_flavor`` adds ``images/kernel/<flavor>.config``.
    """
    recipe = recipe or Recipe()
    spec = arch_spec(arch)
    fragments = recipe.fragments(spec, kernel_flavor)  # an unknown flavor fails first
    source = kernel_recipe.find_source()
    tree = None
    if kernel_tree is not None:
        check_tree(kernel_tree, spec.kernel_arch)
        tree = tree_state(kernel_tree)
    kernel_source: str | dict[str, str] = tree.key_fields() if tree else source.version
    kernel_inputs = recipe.kernel_inputs(
        spec, kernel_source, kernel_recipe.toolchain(spec), kernel_flavor
    )
    rootfs_inputs = recipe.rootfs_inputs(spec, flavor)
    prefix = spec.name + ("-tree" if tree else "")
    prefix += "" if kernel_flavor == "default" else f"-{kernel_flavor}"
    return Plan(
        spec=spec,
        flavor=flavor,
        kernel_name=f"{prefix}-{short_key(kernel_inputs)}",
        rootfs_name=f"{spec.name}-{flavor}-{short_key(rootfs_inputs)}",
        fragments=fragments,
        source=source,
        kernel_flavor=kernel_flavor,
        tree=tree,
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
        kernel_flavor=the_plan.kernel_flavor,
        kernel_identity={
            **the_plan.kernel_identity(),
            **dict(kernel_meta.get("identity") or {}),
            "release": str(kernel_meta.get("release", "")),
            "config_sha256": _config_sha256(kernel_dir / kernel_recipe.CONFIG, kernel_meta),
        },
    )


def _config_sha256(config: Path, meta: dict[str, Any]) -> str:
    """The recorded sha256 of a kernel's ``.config`` (computed for kernels built before it was)."""
    recorded = (meta.get("identity") or {}).get("config_sha256")
    if recorded:
        return str(recorded)
    try:
        return hashlib.sha256(config.read_bytes()).hexdigest()
    except OSError:
        return ""


def lookup(
    arch: str,
    flavor: str = "default",
    *,
    recipe: Recipe | None = None,
    cache: Cache | None = None,
    kernel_tree: Path | None = None,
    kernel_flavor: str = "default",
) -> GuestImage:
    """The cached image for the current recipe; ImageNotBuiltError when it is not built."""
    cache = cache or Cache()
    the_plan = plan(arch, flavor, recipe, kernel_tree=kernel_tree, kernel_flavor=kernel_flavor)
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
        extra = f" --kernel-tree {kernel_tree}" if kernel_tree is not None else ""
        extra += f" --kernel-flavor {kernel_flavor}" if kernel_flavor != "default" else ""
        raise ImageNotBuiltError(
            f"{arch}/{flavor} image not built ({', '.join(missing)} missing in {cache.root}):"
            f" run `python -m harness images build --arch {arch} --flavor {flavor}{extra}`"
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
    kernel_tree: Path | None = None,
    kernel_flavor: str = "default",
) -> GuestImage:
    """The image for the current recipe: returned at once when cached, else built first.

    ``kernel_tree`` builds the kernel from that source tree (out of tree, keyed by its
    commit and uncommitted changes) instead of the package; ``kernel_flavor`` adds
    ``images/kernel/<flavor>.config`` (e.g. ``debug``).  A failed build raises
    ImageBuildError (KernelConfigError for lost options); a bad tree KernelTreeError.
    Safe to call from several processes at once (pytest-xdist workers): builders of the
    same artifact wait for the first and reuse its result. Progress goes to stderr unless
    another ``progress`` is given.
    """
    recipe = recipe or Recipe()
    cache = cache or Cache()
    progress = progress or StreamProgress()
    jobs = jobs or os.cpu_count() or 1
    the_plan = plan(arch, flavor, recipe, kernel_tree=kernel_tree, kernel_flavor=kernel_flavor)
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
            kernel_dir = cache.build(
                "kernel",
                the_plan.kernel_name,
                lambda staging, log: _build_kernel(the_plan, cache, staging, log, progress, jobs),
                progress,
            )
    except ImageBuildError as exc:
        progress.failed(str(exc), log_tail(exc.log) if exc.log else exc.tail)
        raise
    image = _image(the_plan, kernel_dir, rootfs_dir)
    if time.monotonic() - started > 1:
        progress.message(f"{arch}/{flavor} image {image.key} ready")
    return image


def _build_kernel(
    the_plan: Plan, cache: Cache, staging: Path, log: Path, progress: Progress, jobs: int
) -> dict[str, Any]:
    """Build the plan's kernel from the package or the user's tree (ccache for trees)."""
    tree = the_plan.tree
    if tree is None:
        source_tree = kernel_recipe.extract_source(cache, the_plan.source, progress)
    else:
        source_tree = tree.path
    meta = kernel_recipe.build_kernel(
        the_plan.spec,
        the_plan.kernel_name,
        the_plan.fragments,
        source_tree,
        cache,
        staging,
        log,
        progress,
        jobs,
        obj=cache.root / "kbuild" / the_plan.kbuild,
        use_ccache=tree is not None,
        identity=the_plan.kernel_identity(),
    )
    if tree is not None and tree_state(tree.path) != tree:
        raise ImageBuildError(
            "kernel tree", f"{tree.path} changed during the build; build again", log
        )
    meta["kernel_flavor"] = the_plan.kernel_flavor
    return meta
