"""Which QEMU: the host's, QEMU 11 from a cached Debian trixie tree, or a user's build dir.

``--qemu`` (and a matrix's ``qemu:`` entries) name a QEMU in one of these forms:

- nothing, ``installed`` or ``10``: the host's QEMU (``10`` also checks its version);
- ``11``: QEMU 11 from Debian trixie-backports, which needs trixie's libc.  The packages
  are unpacked with the image machinery (``harness.images.rootfs``: mmdebstrap
  ``--variant=extract``) into a host-arch tree cached like the images (key, lock, atomic
  publish) and run through the tree's own dynamic loader by a generated launcher;
- a path to a binary in a QEMU build directory (``<dir>/qemu-bundle``, ``<dir>/pc-bios``
  or ``<dir>/../pc-bios``): run through a launcher that adds ``-L`` for that firmware;
- any other path or program name: that binary as it is.

A launcher is a shell script that ``exec``s, so the PID the harness holds, kills and gave
``PR_SET_PDEATHSIG`` stays QEMU's.  Its second line names the real binary with its size
and mtime (:func:`launcher_target`), so a rebuilt QEMU changes the launcher, and with it
the probe cache's and repro bundles' view of the binary.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cachedir import cache_dir
from harness.errors import ConfigError
from harness.host import host_arch
from harness.images import rootfs
from harness.images.arches import ARCHES
from harness.images.cache import Cache
from harness.images.errors import ImageBuildError
from harness.images.progress import Progress, StreamProgress
from harness.images.recipe import DEBIAN_MIRROR, DEBIAN_SUITE, short_key

INSTALLED = ("installed", "10")
"""``--qemu`` values naming the host's own QEMU (``10`` also requires major version 10)."""
TRIXIE = "11"
"""``--qemu`` value naming QEMU 11 from the cached trixie tree."""
NAMED = (*INSTALLED, TRIXIE)

BINARIES = {"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}

#: QEMU 11 and its firmware; ``package/suite`` as in images/rootfs/*.list (apt does not
#: carry the suite over to dependencies, so each backported package is named)
TRIXIE_PACKAGES = (
    "qemu-system-x86/trixie-backports",
    "qemu-system-arm/trixie-backports",
    "qemu-system-common/trixie-backports",
    "qemu-system-data/trixie-backports",
    "seabios/trixie-backports",
    "ipxe-qemu",
    "qemu-efi-aarch64",
)
#: bump when what this module does to the tree or its launchers changes (part of the key)
TREE_LAYOUT = 2
CACHE_KIND = "qemu"
LAUNCHER_DIR = "bin"
ROOT_DIR = "root"
MARK = "# viommu-harness-qemu:"
_MARK_LINE = re.compile(re.escape(MARK) + r" target=(\S+) size=(\d+) mtime_ns=(\d+)")
_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)\.(\d+)")
# Unneeded to run QEMU and most of the tree's files.
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian",
         "usr/share/bug", "var/cache/apt", "var/lib/apt/lists")  # fmt: skip


@dataclass(frozen=True)
class Target:
    """What a launcher runs: the real binary and its identity when the launcher was made."""

    binary: Path
    size: int
    mtime_ns: int


def is_named(spec: str | int | None) -> bool:
    """Whether a ``--qemu`` / matrix value names a QEMU release rather than a binary."""
    return spec is not None and str(spec) in NAMED


# --- build directories ---------------------------------------------------------------


def build_firmware_dirs(binary: Path) -> list[Path]:
    """``-L`` directories of a binary in a QEMU build directory, first match first ([] if none).

    A meson build's ``qemu-bundle/<prefix>/share/qemu`` (symlinks to every installed blob,
    the source tree's included), then ``<dir>/pc-bios`` (what the build generated) and
    ``<dir>/../pc-bios`` (the source tree's blobs, for ``SRC/build/qemu-system-*``).
    """
    here = binary.parent
    found: list[Path] = []
    bundle = here / "qemu-bundle"
    if bundle.is_dir():
        found += sorted(p for p in bundle.glob("**/share/qemu") if p.is_dir())
    for candidate in (here / "pc-bios", here.parent / "pc-bios"):
        if candidate.is_dir() and candidate not in found:
            found.append(candidate)
    return found


def launcher_text(
    target: Path, argv: list[str], env: dict[str, str], note: str, st: os.stat_result | None = None
) -> str:
    """A shell script that ``exec``s ``argv`` (then its own arguments) with ``env`` set.

    ``st``: the target's stat when it is not yet at ``target`` (a tree being built).
    """
    st = st or target.stat()
    lines = [
        "#!/bin/sh",
        f"{MARK} target={target} size={st.st_size} mtime_ns={st.st_mtime_ns}",
        f"# {note}",
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())),
        "exec " + " ".join(shlex.quote(a) for a in argv) + ' "$@"',
    ]
    return "\n".join(lines) + "\n"


def launcher_target(path: str | Path) -> Target | None:
    """The binary a launcher made here runs (None for anything else, e.g. a real QEMU)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(512)
    except OSError:
        return None
    if not head.startswith(b"#!/bin/sh\n"):
        return None
    match = _MARK_LINE.search(head.decode(errors="replace"))
    if match is None:
        return None
    return Target(Path(match.group(1)), int(match.group(2)), int(match.group(3)))


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o755)
    os.replace(temporary, path)


def build_dir_launcher(binary: Path, launchers: Path | None = None) -> Path | None:
    """A launcher adding ``-L`` for the firmware of a build-dir binary (None: not a build dir).

    Kept in the harness cache (``qemu-launchers/<hash of the path>/``), never in the
    user's tree; rewritten when the binary changes.
    """
    dirs = build_firmware_dirs(binary)
    if not dirs:
        return None
    base = launchers if launchers is not None else cache_dir("qemu-launchers")
    where = base / short_key({"binary": str(binary)}) / binary.name
    argv = [str(binary), *(a for d in dirs for a in ("-L", str(d)))]
    note = f"QEMU built in {binary.parent}, its firmware from the build tree"
    _write_if_changed(where, launcher_text(binary, argv, {}, note))
    return where


# --- QEMU 11 from a trixie tree --------------------------------------------------------


def tree_inputs(arch: str | None = None) -> dict[str, Any]:
    """Everything that determines the QEMU 11 tree (hashed into its key)."""
    spec = ARCHES[arch or host_arch()]
    return {
        "kind": CACHE_KIND,
        "host_arch": spec.debian_arch,
        "suite": DEBIAN_SUITE,
        "mirror": DEBIAN_MIRROR,
        "packages": sorted(TRIXIE_PACKAGES),
        "layout": TREE_LAYOUT,
    }


def tree_name(arch: str | None = None) -> str:
    """The tree's artifact name: ``11-<host arch>-<key>``."""
    return f"{TRIXIE}-{arch or host_arch()}-{short_key(tree_inputs(arch))}"


def relativise_symlinks(tree: Path) -> int:
    """Point every absolute symlink under ``tree`` at the same name inside ``tree``.

    ``/usr/share/qemu/bios-256k.bin -> /usr/share/seabios/bios-256k.bin`` would otherwise
    reach the host's (bookworm) files.  Returns how many links were rewritten.
    """
    changed = 0
    for directory, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            link = Path(directory) / name
            if not link.is_symlink():
                continue
            target = os.readlink(link)
            if not target.startswith("/"):
                continue
            inside = tree / target.lstrip("/")
            link.unlink()
            link.symlink_to(os.path.relpath(inside, link.parent))
            changed += 1
    return changed


def escapes(tree: Path, directory: Path) -> list[str]:
    """Names under ``directory`` whose symlinks resolve outside ``tree`` (should be none)."""
    root = tree.resolve()
    bad = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            bad.append(f"{path.relative_to(tree)} -> {os.readlink(path)}")
    return bad


def loader_name(root: Path, triplet: str) -> str:
    """The file name of the tree's dynamic loader (``ld-linux-x86-64.so.2``)."""
    loaders = sorted((root / "usr" / "lib" / triplet).glob("ld-linux*.so.*"))
    if not loaders:
        raise ImageBuildError("qemu 11", f"no dynamic loader in {root}/usr/lib/{triplet}")
    return loaders[0].name


def tree_launcher_text(
    final: Path,
    arch: str,
    loader: str,
    data_dirs: list[str],
    built: Path | None = None,
    host: str | None = None,
) -> str:
    """The launcher of ``qemu-system-<arch>`` in the tree published at ``final``.

    ``data_dirs``: QEMU's compiled-in firmware/data directories (``/usr/share/qemu``,
    ``/usr/share/seabios``, ...), each given as ``-L`` inside the tree so that they are
    searched before the host's.  ``built``: where the tree is while it is being built
    (the binary is stat'ed there).
    """
    spec = ARCHES[host or host_arch()]
    root = final / ROOT_DIR
    libs = [root / "usr" / "lib" / spec.gnu_triplet, root / "lib" / spec.gnu_triplet]
    binary = root / "usr" / "bin" / BINARIES[arch]
    argv = [
        str(root / "usr" / "lib" / spec.gnu_triplet / loader),
        "--inhibit-cache",  # never the host's /etc/ld.so.cache (bookworm libraries)
        "--library-path",
        ":".join(map(str, libs)),
        str(binary),
        *(a for d in data_dirs for a in ("-L", str(root / d.lstrip("/")))),
    ]
    env = {
        # Debian builds QEMU with absolute module and data paths: /usr/lib/<triplet>/qemu
        # would be the host's QEMU 10 modules.  GIO must not load the host's modules either.
        "QEMU_MODULE_DIR": str(root / "usr" / "lib" / spec.gnu_triplet / "qemu"),
        "GIO_MODULE_DIR": str(root / "usr" / "lib" / spec.gnu_triplet / "gio" / "modules"),
    }
    note = "QEMU 11 from a Debian trixie tree, run through the tree's own dynamic loader"
    st = (built / ROOT_DIR / binary.relative_to(root)).stat() if built else None
    return launcher_text(binary, argv, env, note, st)


def _build_tree(final: Path, staging: Path, log_path: Path, progress: Progress) -> dict[str, Any]:
    """Unpack the packages into ``staging/root``, fix it up, write launchers; the metadata."""
    spec = ARCHES[host_arch()]
    tree = staging / ROOT_DIR
    started = time.monotonic()
    packages = list(TRIXIE_PACKAGES)
    with log_path.open("w") as log:
        progress.begin(f"QEMU 11 tree ({spec.name}): mmdebstrap {len(packages)} packages")
        rootfs._unpack(spec.debian_arch, packages, tree, log, log_path, progress)
        debs = sorted((tree / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        manifest = [rootfs._deb_identity(deb) for deb in debs]
        if not any(line.startswith("qemu-system-x86 ") for line in manifest):
            raise ImageBuildError("qemu 11", f"qemu-system-x86 was not unpacked into {tree}")
        progress.end(f"{len(manifest)} packages")
        progress.begin(f"QEMU 11 tree ({spec.name}): symlinks, launchers, --version")
        for relative in PRUNE:
            shutil.rmtree(tree / relative, ignore_errors=True)
        fixed = relativise_symlinks(tree)
        log.write(f"absolute symlinks made relative: {fixed}\n")
        (staging / "packages.txt").write_text("".join(f"{line}\n" for line in manifest))
        loader = loader_name(tree, spec.gnu_triplet)
        # The launchers name the tree where the cache will publish it (renaming staging);
        # each is run first with the staging paths: `-L help` without -L lists QEMU's
        # compiled-in data directories, then `--version` checks it is QEMU 11.
        versions = {}
        for arch, name in BINARIES.items():
            launcher = staging / LAUNCHER_DIR / name
            launcher.parent.mkdir(exist_ok=True)
            launcher.write_text(tree_launcher_text(final, arch, loader, [], built=staging)
                                .replace(str(final), str(staging)))  # fmt: skip
            launcher.chmod(0o755)
            compiled = _data_dirs(launcher, log_path)
            dirs = [d for d in compiled if (tree / d.lstrip("/")).is_dir()]
            for directory in dirs:
                if bad := escapes(tree, tree / directory.lstrip("/")):
                    raise ImageBuildError(
                        "qemu 11", f"symlinks leave the tree: {bad[:3]}", log_path
                    )
            log.write(f"{name}: data directories {compiled}, in the tree: {dirs}\n")
            text = tree_launcher_text(final, arch, loader, dirs, built=staging)
            launcher.write_text(text.replace(str(final), str(staging)))
            versions[arch] = _check_version(launcher, log_path)
            log.write(f"{name}: QEMU {versions[arch]}\n")
            launcher.write_text(text)
        progress.end(", ".join(f"{a} {v}" for a, v in versions.items()))
    return {
        "kind": CACHE_KIND,
        "arch": spec.name,
        "versions": versions,
        "packages": len(manifest),
        "qemu_package": next(p for p in manifest if p.startswith("qemu-system-x86 ")),
        "build_seconds": round(time.monotonic() - started, 1),
    }


def _data_dirs(launcher: Path, log_path: Path) -> list[str]:
    """QEMU's own data directories (``-L help``), absolute as compiled in."""
    result = subprocess.run(
        [str(launcher), "-L", "help"], capture_output=True, text=True, timeout=60, check=False
    )
    dirs = [line.strip() for line in result.stdout.splitlines() if line.startswith("/")]
    if result.returncode != 0 or not dirs:
        raise ImageBuildError(
            "qemu 11", f"{launcher.name} -L help: {result.stderr.strip()[:200]}", log_path
        )
    return dirs


def _check_version(launcher: Path, log_path: Path) -> str:
    """Run ``launcher --version``; ImageBuildError unless it is QEMU 11.x."""
    result = subprocess.run(
        [str(launcher), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    first = (result.stdout or result.stderr).strip().splitlines()[:1]
    match = _VERSION.search(result.stdout)
    if result.returncode != 0 or match is None or match.group(1) != TRIXIE:
        raise ImageBuildError(
            "qemu 11", f"{launcher.name} --version: {first[0] if first else 'no output'}", log_path
        )
    return ".".join(match.groups())


def ensure_trixie(arch: str, progress: Progress | None = None, cache: Cache | None = None) -> Path:
    """The launcher of QEMU 11 for ``arch`` guests, building the cached tree on first use."""
    if arch not in BINARIES:
        raise ConfigError(f"unknown guest arch {arch!r} (known: {', '.join(BINARIES)})")
    cache = cache or Cache()
    name = tree_name()
    found = cache.lookup(CACHE_KIND, name)
    if found is None:
        progress = progress or StreamProgress(prefix="qemu")
        final = cache.artifact(CACHE_KIND, name)
        try:
            found = cache.build(
                CACHE_KIND,
                name,
                lambda staging, log: _build_tree(final, staging, log, progress),
                progress,
                sync_files=False,
                remove_stale=rootfs.remove_staging,
            )
        except ImageBuildError as exc:
            from harness.images.steps import log_tail

            progress.failed(str(exc), log_tail(exc.log) if exc.log else exc.tail)
            raise
        progress.message(f"QEMU 11 tree {name} ready: {found}")
    return found / LAUNCHER_DIR / BINARIES[arch]
