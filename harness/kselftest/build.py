"""Build the kernel's iommu and VFIO selftests for a guest arch, statically, and cache them.

The binaries come from the same extracted ``linux-source-7.3`` tree the guest kernels are
built from (``harness.images.kernel.extract_source``), compiled against that tree's own
uAPI headers (``make headers_install`` for the guest arch) with the native or cross
compiler, linked statically (libcap, libuuid: ``libcap-dev``/``uuid-dev`` and their
``:arm64`` multiarch twins, which ``scripts/setup.sh`` installs) so that they run in any
guest root filesystem.  No test is patched.  The result is an artifact of the image
cache, ``kselftest/<arch>-<key>/``, keyed by the source package version, the compiler,
the static libraries' package versions and this module's code::

    bin/iommu/iommufd, bin/iommu/iommufd_fail_nth, bin/vfio/vfio_*_test, meta.json
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.images import kernel as kernel_recipe
from harness.images.arches import ArchSpec, arch_spec
from harness.images.cache import Cache, content_key, read_meta
from harness.images.errors import ImageBuildError, PrerequisiteError
from harness.images.progress import Progress, StreamProgress
from harness.images.steps import log_tail, run_logged, tool_version

KIND = "kselftest"
SUITES: dict[str, tuple[str, ...]] = {
    "iommu": ("iommufd", "iommufd_fail_nth"),
    "vfio": (
        "vfio_dma_mapping_test",
        "vfio_dma_mapping_mmio_test",
        "vfio_iommufd_setup_test",
        "vfio_pci_device_test",
        "vfio_pci_device_init_perf_test",
        "vfio_pci_driver_test",
        "vfio_pci_sriov_uapi_test",
    ),
}
"""Suite -> the binaries its Makefile builds (``TEST_GEN_PROGS``, Linux 7.3)."""

#: Debian packages whose static libraries are linked in (``<name>:<debian arch>``)
STATIC_LIBRARIES = ("libcap-dev", "uuid-dev")
_SELFTESTS = Path("tools/testing/selftests")
_EXPECTED_STEPS = 26


@dataclass(frozen=True)
class SelftestBuild:
    """A finished build: where each binary is, and the facts it was built from."""

    arch: str
    root: Path
    meta: dict[str, Any]

    def binary(self, suite: str, name: str) -> Path:
        """The path of one binary of a suite."""
        return self.root / "bin" / suite / name

    def binaries(self, suite: str) -> list[Path]:
        """The binaries of a suite, in ``SUITES`` order."""
        return [self.binary(suite, name) for name in SUITES[suite]]


def library_versions(spec: ArchSpec) -> dict[str, str]:
    """The installed version of each static library package for an arch ('missing' if not)."""
    found = {}
    for package in STATIC_LIBRARIES:
        name = f"{package}:{spec.debian_arch}"
        try:
            done = subprocess.run(
                ["dpkg-query", "-W", "-f=${Status} ${Version}", name],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError:
            found[name] = "unknown"
            continue
        words = done.stdout.split()
        installed = done.returncode == 0 and "installed" in words[:3] and len(words) == 4
        found[name] = words[3] if installed else "missing"
    return found


def build_inputs(spec: ArchSpec, source: kernel_recipe.KernelSource) -> dict[str, Any]:
    """What determines the binaries: source version, compiler, libraries, this recipe."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return {
        "source": f"{source.package}={source.version}",
        "arch": spec.name,
        "cross_compile": spec.cross_compile,
        "compiler": kernel_recipe.toolchain(spec),
        "libraries": library_versions(spec),
        "suites": SUITES,
        "recipe": code,
    }


def artifact_name(spec: ArchSpec, inputs: dict[str, Any]) -> str:
    """``<arch>-<16 hex digits>``: the cache name of a build with these inputs."""
    return f"{spec.name}-{content_key(inputs)[:16]}"


def _check_prerequisites(spec: ArchSpec, inputs: dict[str, Any]) -> None:
    if inputs["compiler"] == "missing":
        raise PrerequisiteError(
            f"kselftest {spec.name}: {spec.cross_compile}gcc not found"
            " (scripts/setup.sh installs it)"
        )
    missing = [name for name, version in inputs["libraries"].items() if version == "missing"]
    if missing:
        raise PrerequisiteError(
            f"kselftest {spec.name}: static libraries missing: {' '.join(missing)}"
            " (scripts/setup.sh installs them; arm64 needs `dpkg --add-architecture arm64`)"
        )


def _build(
    spec: ArchSpec,
    source_tree: Path,
    suites: tuple[str, ...],
    staging: Path,
    log_path: Path,
    progress: Progress,
    jobs: int,
) -> dict[str, Any]:
    started = time.monotonic()
    env = {"ARCH": spec.kernel_arch, "LC_ALL": "C"}
    with (
        tempfile.TemporaryDirectory(prefix=f"kselftest-{spec.name}-") as tmp,
        log_path.open("w") as log,
    ):
        work = Path(tmp)
        headers = work / "usr"
        progress.begin(f"kselftest {spec.name}: uAPI headers (make headers_install)")
        run_logged(
            "make headers_install",
            [
                "make", "-s", "-C", str(source_tree), f"O={work / 'obj'}",
                f"ARCH={spec.kernel_arch}", f"INSTALL_HDR_PATH={headers}", "headers_install",
            ],
            log, log_path,
        )  # fmt: skip
        progress.end()
        total = sum(len(SUITES[s]) for s in suites)
        expected = max(_EXPECTED_STEPS, total)
        steps = 0
        progress.begin(f"kselftest {spec.name}: compile {', '.join(suites)} (static, -j{jobs})")

        def on_line(line: str) -> None:
            nonlocal steps
            words = line.split()
            if words and (words[0] == "CC" or words[0].endswith("gcc")):
                steps += 1
                progress.update(min(steps / expected, 0.99), " ".join(words[:2])[:60])

        for suite in suites:
            out = work / "out" / suite
            out.mkdir(parents=True)
            run_logged(
                f"make {suite} selftests",
                [
                    "make", "-C", str(source_tree / _SELFTESTS / suite), f"OUTPUT={out}",
                    f"ARCH={spec.kernel_arch}", f"CROSS_COMPILE={spec.cross_compile}",
                    f"KHDR_INCLUDES=-isystem {headers / 'include'}", "LDFLAGS=-static",
                    f"-j{jobs}",
                ],
                log, log_path, env=env, on_line=on_line,
            )  # fmt: skip
            target = staging / "bin" / suite
            target.mkdir(parents=True)
            for name in SUITES[suite]:
                built = out / name
                if not built.is_file():
                    raise ImageBuildError(
                        f"kselftest {spec.name}", f"{suite}: {name} was not built", log_path
                    )
                shutil.copy2(built, target / name)
        progress.end(f"{total} binaries, {steps} compiler steps")
    sizes = {
        f"{suite}/{name}": (staging / "bin" / suite / name).stat().st_size
        for suite in suites
        for name in SUITES[suite]
    }
    return {
        "kind": KIND,
        "arch": spec.name,
        "suites": list(suites),
        "sizes": sizes,
        "source_tree": str(source_tree),
        "build_seconds": round(time.monotonic() - started, 1),
    }


def ensure_selftests(
    arch: str,
    progress: Progress | None = None,
    *,
    cache: Cache | None = None,
    jobs: int | None = None,
) -> SelftestBuild:
    """The selftest binaries for ``arch``: from the cache, or built first (a minute or two).

    Raises ``PrerequisiteError`` when the compiler or a static library is missing and
    ``ImageBuildError`` (with the log's path) when a step fails.
    """
    spec = arch_spec(arch)
    cache = cache or Cache()
    progress = progress or StreamProgress(prefix="kselftest")
    source = kernel_recipe.find_source()
    inputs = build_inputs(spec, source)
    name = artifact_name(spec, inputs)
    found = cache.lookup(KIND, name)
    if found is None:
        _check_prerequisites(spec, inputs)
        tree = kernel_recipe.extract_source(cache, source, progress)
        workers = jobs or os.cpu_count() or 1
        try:
            found = cache.build(
                KIND,
                name,
                lambda staging, log: {
                    **_build(spec, tree, tuple(SUITES), staging, log, progress, workers),
                    "inputs": inputs,
                },
                progress,
            )
        except ImageBuildError as exc:
            progress.failed(str(exc), log_tail(exc.log) if exc.log else exc.tail)
            raise
    return SelftestBuild(arch=spec.name, root=found, meta=read_meta(found))


def toolchain_line(arch: str) -> str:
    """The compiler's version line for an arch (for reports)."""
    return tool_version([f"{arch_spec(arch).cross_compile}gcc", "--version"])
