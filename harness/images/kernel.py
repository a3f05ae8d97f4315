"""Guest kernels from Debian's ``linux-source-7.3``: fragments on allnoconfig, checked, built.

The source tarball is extracted once per package version into the cache. Each source
(package or user's tree), arch and kernel flavor has one persistent out-of-tree build
directory under ``kbuild/`` reused across keys, so a changed fragment or source file
recompiles only what it touches; the finished kernel still goes through a staging
directory and is published by rename like every other artifact.  Nothing is written into
the source tree (``make O=``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.images.arches import ArchSpec
from harness.images.cache import Cache, read_meta
from harness.images.errors import ImageBuildError, KernelConfigError, PrerequisiteError
from harness.images.kconfig import describe_mismatches, merge_requests, mismatches, parse_config
from harness.images.progress import Progress, StepEstimate
from harness.images.steps import die_with_parent, run_logged, tool_version

SOURCE_PACKAGE = "linux-source-7.3"
SOURCE_TARBALL = Path(f"/usr/src/{SOURCE_PACKAGE}.tar.xz")
CONFIG = "config"
BUILD_ENV = {
    "KBUILD_BUILD_USER": "viommu-harness",
    "KBUILD_BUILD_HOST": "images",
    "KBUILD_BUILD_TIMESTAMP": "1970-01-01",
}


@dataclass(frozen=True)
class KernelSource:
    """The installed kernel source package: tarball and Debian version."""

    package: str
    tarball: Path
    version: str


def find_source(tarball: Path = SOURCE_TARBALL, package: str = SOURCE_PACKAGE) -> KernelSource:
    """The installed ``linux-source-7.3`` (PrerequisiteError when it is not installed)."""
    if not tarball.is_file():
        raise PrerequisiteError(f"{tarball} is missing: install {package} (scripts/setup.sh does)")
    try:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info = tarball.stat()
        version = f"file-{info.st_size}-{int(info.st_mtime)}"
    return KernelSource(package, tarball, version)


def toolchain(spec: ArchSpec) -> str:
    """The compiler's version line (part of the kernel key; ``missing`` if absent)."""
    return tool_version([f"{spec.cross_compile}gcc", "--version"])


def source_artifact_name(source: KernelSource) -> str:
    """The cache name of a source package version's extracted tree."""
    return re.sub(r"[^A-Za-z0-9.+-]", "_", f"{source.package}_{source.version}")


def extract_source(cache: Cache, source: KernelSource, progress: Progress) -> Path:
    """The extracted source tree of this package version (extracted once, then cached)."""
    name = source_artifact_name(source)

    def builder(staging: Path, log_path: Path) -> dict[str, Any]:
        progress.begin(f"kernel source: extract {source.tarball.name} ({source.version})")
        total = source.tarball.stat().st_size
        with log_path.open("w") as log:
            log.write(f"$ tar -xJ -C {staging} < {source.tarball}\n")
            log.flush()
            process = subprocess.Popen(
                ["tar", "-xJ", "-C", str(staging)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
            assert process.stdin is not None
            done = 0
            try:
                with source.tarball.open("rb") as tarball:
                    while chunk := tarball.read(1 << 20):
                        process.stdin.write(chunk)
                        done += len(chunk)
                        progress.update(done / total)
                process.stdin.close()
                status = process.wait()
            except BaseException:
                process.kill()
                process.wait()
                raise
        if status != 0:
            raise ImageBuildError("kernel source", f"tar exited with status {status}", log_path)
        trees = [p.name for p in staging.iterdir() if p.is_dir()]
        if len(trees) != 1:
            raise ImageBuildError("kernel source", f"expected one top directory, got {trees}")
        progress.end()
        return {
            "kind": "src",
            "package": source.package,
            "version": source.version,
            "tree": trees[0],
        }

    artifact = cache.build("src", name, builder, progress, sync_files=False)
    tree = artifact / str(read_meta(artifact)["tree"])
    if not (tree / "Makefile").is_file():
        raise ImageBuildError("kernel source", f"{tree} holds no kernel tree")
    return tree


def check_config(fragments: list[tuple[str, str]], config_text: str) -> None:
    """Raise KernelConfigError listing every requested option the final config lost."""
    found = mismatches(merge_requests(fragments), parse_config(config_text))
    if found:
        raise KernelConfigError("kernel config", describe_mismatches(found))


def ccache_make_args(spec: ArchSpec, cache: Cache) -> tuple[list[str], dict[str, str]]:
    """``CC=ccache <gcc>`` and its environment when ``ccache`` is installed, else nothing."""
    if shutil.which("ccache") is None:
        return [], {}
    env = {"CCACHE_DIR": str(cache.root / "ccache"), "CCACHE_MAXSIZE": "5G"}
    return [f"CC=ccache {spec.cross_compile}gcc"], env


def build_kernel(
    spec: ArchSpec,
    key: str,
    fragments: list[tuple[str, str]],
    source_tree: Path,
    cache: Cache,
    staging: Path,
    log_path: Path,
    progress: Progress,
    jobs: int,
    *,
    obj: Path | None = None,
    use_ccache: bool = False,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Configure, check and compile one kernel into ``staging``; returns its metadata.

    ``obj`` is the persistent build directory (default ``kbuild/<arch>``); ``identity``
    (source, commit, dirty hash, kernel flavor) goes into the metadata with the release
    and the sha256 of the final ``.config``.
    """
    started = time.monotonic()
    obj = obj or cache.root / "kbuild" / spec.name
    cc_args, cc_env = ccache_make_args(spec, cache) if use_ccache else ([], {})
    build_env = {**BUILD_ENV, **cc_env}
    make = [
        "make",
        "-C",
        str(source_tree),
        f"O={obj}",
        f"ARCH={spec.kernel_arch}",
        f"CROSS_COMPILE={spec.cross_compile}",
        *cc_args,
    ]
    with cache.lock("kernel-build", progress), log_path.open("w") as log:
        stamp = obj / ".viommu-source"
        fresh = not stamp.is_file() or stamp.read_text() != str(source_tree)
        if fresh:
            shutil.rmtree(obj, ignore_errors=True)
        obj.mkdir(parents=True, exist_ok=True)
        stamp.write_text(str(source_tree))

        progress.begin(f"kernel {spec.name}: configure (allnoconfig + fragments, olddefconfig)")
        run_logged("make allnoconfig", [*make, "allnoconfig"], log, log_path, env=build_env)
        fragment_dir = obj / "fragments"
        shutil.rmtree(fragment_dir, ignore_errors=True)
        fragment_dir.mkdir()
        fragment_paths = []
        for name, text in fragments:
            (fragment_dir / name).write_text(text)
            fragment_paths.append(str(fragment_dir / name))
        run_logged(
            "merge_config.sh",
            [
                "scripts/kconfig/merge_config.sh",
                "-m",
                "-O",
                str(obj),
                str(obj / ".config"),
                *fragment_paths,
            ],
            log,
            log_path,
            cwd=source_tree,
            env={"ARCH": spec.kernel_arch, "CROSS_COMPILE": spec.cross_compile},
        )
        run_logged("make olddefconfig", [*make, "olddefconfig"], log, log_path, env=build_env)
        try:
            check_config(fragments, (obj / ".config").read_text())
        except KernelConfigError as exc:
            log.write(f"\nERROR: {exc.problem}\n")
            raise KernelConfigError(exc.step, exc.problem, log_path) from None
        progress.end()

        stats_name = f"kernel-{obj.name}"
        expected = int(cache.read_stats(stats_name).get("steps", spec.expected_kernel_steps))
        estimate = StepEstimate(expected)
        how = ("from scratch" if fresh else "incremental") + (", ccache" if cc_args else "")
        progress.begin(f"kernel {spec.name}: compile {spec.image_target} ({how}, -j{jobs})")

        def on_line(line: str) -> None:
            if estimate.feed(line):
                progress.update(estimate.fraction, " ".join(line.split()[:2]))

        run_logged(
            f"make {spec.image_target}",
            [*make, f"-j{jobs}", spec.image_target],
            log,
            log_path,
            env=build_env,
            on_line=on_line,
        )
        if fresh:
            cache.write_stats(stats_name, {"steps": estimate.steps})
        release = (obj / "include" / "config" / "kernel.release").read_text().strip()
        image = obj / spec.image_path
        shutil.copyfile(image, staging / spec.image_target)
        shutil.copyfile(obj / ".config", staging / CONFIG)
        config_sha256 = hashlib.sha256((staging / CONFIG).read_bytes()).hexdigest()
        progress.end(f"{release}, {image.stat().st_size / 2**20:.1f} MiB, {estimate.steps} steps")
        log.write(f"kernel {release}: {image.stat().st_size} bytes\n")
    return {
        "kind": "kernel",
        "arch": spec.name,
        "key": key,
        "release": release,
        "image": spec.image_target,
        "size": image.stat().st_size,
        "steps": estimate.steps,
        "from_scratch": fresh,
        "jobs": jobs,
        "build_seconds": round(time.monotonic() - started, 1),
        "source_tree": str(source_tree),
        "kbuild": str(obj),
        "ccache": bool(cc_args),
        "os_cpu_count": os.cpu_count(),
        "identity": {**(identity or {}), "release": release, "config_sha256": config_sha256},
    }
