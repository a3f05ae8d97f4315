"""Guest root filesystem: a Debian trixie tree unpacked by mmdebstrap, packed as an initramfs.

``--variant=extract`` unpacks the packages and their dependencies without running any
maintainer script, so a foreign-arch tree (arm64 on x86) needs no binfmt / qemu-user.
What the scripts would have done for this small system is done here instead: accounts,
sshd's configuration, and the init (``guests/init/init``) as PID 1.

mmdebstrap writes a tarball (``--mode=unshare`` for an ordinary user, ``--mode=root`` for
root), which is unpacked here as the building user with the tarball's owners and modes
kept aside (:class:`~harness.images.cpio.Recorded`) for the archive. So no file in the
cache ever belongs to a subordinate id: whatever a failed or killed build leaves, its
user can delete, and root and ordinary users build the same archive.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from harness.host import host_arch
from harness.images.arches import ARCHES, READY_MARKER, ArchSpec
from harness.images.cpio import Entry, Recorded, write_archive
from harness.images.errors import ImageBuildError, PrerequisiteError
from harness.images.progress import Progress
from harness.images.recipe import DEBIAN_MIRROR, DEBIAN_SUITE, Recipe, extra_suites
from harness.images.steps import run_logged

_ALTERNATIVE = re.compile(
    r"update-alternatives\s+(?:--quiet\s+)?--install\s+(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)"
    r"((?:\s+--slave\s+\S+\s+\S+\s+\S+)*)"
)
_SLAVE = re.compile(r"--slave\s+(\S+)\s+\S+\s+(\S+)")
# Byte-compiled ahead of time (Python would otherwise compile at every boot, ~3 s under TCG).
PYTHON_SKIP = r"/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|pydoc_data)/"

INITRAMFS = "initramfs.cpio"
MANIFEST = "packages.txt"
# In a staging directory: the temporary directory of a running mmdebstrap (in $TMPDIR,
# owned by subordinate ids in unshare mode), for the next build to remove if it was killed.
TEMPDIR_NOTE = "mmdebstrap-tempdir"
# Where newuidmap/newgidmap find the ranges of ids an ordinary user may map (unshare mode).
SUBORDINATE_ID_TABLES = (Path("/etc/subuid"), Path("/etc/subgid"))
_TEMPDIR_LINE = re.compile(r"I: using (/\S+/mmdebstrap\.\w+) as tempdir")

# Unneeded in a test guest and a third of the tree: boot time grows with the initramfs.
PRUNE = (
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/share/zsh",
    "usr/share/bug",
    "usr/share/common-licenses",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
)

# Accounts the skipped maintainer scripts would have created (openssh-server's sysusers.d).
EXTRA_USERS = ("sshd:x:100:65534:sshd user:/run/sshd:/usr/sbin/nologin",)

# Device nodes the kernel needs before /init mounts devtmpfs (its stdio is /dev/console).
BOOT_NODES = (
    Entry("dev", stat.S_IFDIR | 0o755),
    Entry("dev/console", stat.S_IFCHR | 0o600, rdev_major=5, rdev_minor=1),
    Entry("dev/null", stat.S_IFCHR | 0o666, rdev_major=1, rdev_minor=3),
)


def build_rootfs(
    spec: ArchSpec,
    flavor: str,
    key: str,
    recipe: Recipe,
    staging: Path,
    log_path: Path,
    progress: Progress,
) -> dict[str, Any]:
    """Build the initramfs of one arch and flavor into ``staging``; returns its metadata."""
    packages = recipe.packages(flavor)
    tree = staging / "tree"
    started = time.monotonic()
    umask = os.umask(0o022)  # files added to the tree get the modes a root build gives them
    try:
        with log_path.open("w") as log:
            progress.begin(f"rootfs {spec.name}/{flavor}: mmdebstrap {len(packages)} packages")
            unpacked = _unpack(spec.debian_arch, packages, tree, log, log_path, progress)
            debs = sorted((tree / "var" / "cache" / "apt" / "archives").glob("*.deb"))
            manifest = [_deb_identity(deb) for deb in debs]
            if not manifest:
                raise ImageBuildError(
                    "mmdebstrap", f"no packages were unpacked into {tree}", log_path
                )
            progress.end(f"{len(manifest)} packages")

            progress.begin(f"rootfs {spec.name}/{flavor}: configure, byte-compile Python, pack")
            alternatives = [a for deb in debs for a in parse_alternatives(_postinst(deb))]
            for deb in debs:
                deb.unlink()
            customise_tree(tree, recipe, spec, flavor, key)
            for link in apply_alternatives(tree, alternatives):
                log.write(f"alternative: {link}\n")
            _compile_python(tree, staging, log, log_path)
            size = write_archive(
                tree, staging / INITRAMFS, [*unpacked.nodes, *BOOT_NODES], unpacked.recorded
            )
            (staging / MANIFEST).write_text("".join(f"{line}\n" for line in manifest))
            shutil.rmtree(tree)
            progress.end(f"{size / 2**20:.0f} MiB")
            log.write(f"initramfs: {size} bytes\n")
    finally:
        os.umask(umask)
    return {
        "kind": "rootfs",
        "arch": spec.name,
        "flavor": flavor,
        "key": key,
        "packages": len(manifest),
        "size": size,
        "build_seconds": round(time.monotonic() - started, 1),
    }


@dataclass(frozen=True)
class Unpacked:
    """What unpacking a tarball kept aside: real owners and modes, and its device nodes."""

    recorded: dict[str, Recorded]
    nodes: list[Entry]


def _unpack(
    debian_arch: str,
    packages: list[str],
    tree: Path,
    log: TextIO,
    log_path: Path,
    progress: Progress | None = None,
) -> Unpacked:
    """Unpack packages and their dependencies for ``debian_arch`` (no maintainer scripts).

    mmdebstrap writes a tarball next to ``tree`` (as subordinate ids in unshare mode its
    temporary directory lives in ``$TMPDIR``, removed by mmdebstrap even when stopped by a
    signal); the tarball is unpacked into ``tree`` as the building user and deleted.
    """
    mode = "root" if os.geteuid() == 0 else "unshare"
    if mode == "unshare":
        check_unshare()
    archive = tree.with_name(tree.name + ".tar")
    note = tree.parent / TEMPDIR_NOTE

    def on_line(line: str) -> None:
        if match := _TEMPDIR_LINE.match(line):
            note.write_text(match.group(1) + "\n")
        if progress is not None:
            _mmdebstrap_progress(progress, line)

    try:
        run_logged(
            "mmdebstrap",
            [
                "mmdebstrap",
                f"--mode={mode}",
                "--variant=extract",
                f"--arch={debian_arch}",
                "--format=tar",
                "--skip=cleanup/apt/cache",
                "--verbose",
                f"--include={','.join(packages)}",
                DEBIAN_SUITE,
                str(archive),
                DEBIAN_MIRROR,
                *(f"deb {DEBIAN_MIRROR} {suite} main" for suite in extra_suites(packages)),
            ],
            log,
            log_path,
            on_line=on_line,
        )
    except BaseException:
        remove_mmdebstrap_tempdir(note)  # mmdebstrap was killed before it could
        raise
    note.unlink(missing_ok=True)
    try:
        return unpack_tarball(archive, tree)
    except (OSError, tarfile.TarError) as exc:
        raise ImageBuildError("unpack", f"{archive}: {exc}", log_path) from None
    finally:
        archive.unlink(missing_ok=True)


def unpack_tarball(archive: Path, tree: Path) -> Unpacked:
    """Unpack a root filesystem tarball as the calling user, keeping owners and modes aside.

    Every file gets its owner's read/write (directories also search) permission on disk,
    so the user can always read and delete the tree; device nodes are not created (an
    ordinary user cannot) but returned as archive entries. Names leaving ``tree`` are refused.
    """
    recorded: dict[str, Recorded] = {}
    nodes: list[Entry] = []
    directories: list[tuple[Path, int, float]] = []
    tree.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r|") as tar:
        for member in tar:
            name = _member_name(member.name)
            if not name:
                continue
            path = tree / name
            mtime = float(member.mtime)
            kind = _TAR_TYPES.get(member.type)
            if kind is None:
                raise tarfile.TarError(f"{member.name}: unsupported member type {member.type!r}")
            full = kind | member.mode
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                node = Entry(name, full, member.uid, member.gid, int(mtime))
                nodes.append(replace(node, rdev_major=member.devmajor, rdev_minor=member.devminor))
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind != stat.S_IFDIR and os.path.lexists(path):
                path.unlink()
            unpacked = member.mode | (0o700 if kind == stat.S_IFDIR else 0o600)
            if member.islnk():
                os.link(tree / _member_name(member.linkname), path, follow_symlinks=False)
                unpacked = stat.S_IMODE(path.lstat().st_mode)
                full = stat.S_IFMT(path.lstat().st_mode) | member.mode
            elif kind == stat.S_IFDIR:
                path.mkdir(exist_ok=True)
                directories.append((path, unpacked, mtime))
            elif kind == stat.S_IFREG:
                source = tar.extractfile(member)
                assert source is not None
                with source, path.open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
            elif kind == stat.S_IFLNK:
                os.symlink(member.linkname, path)
                unpacked = 0o777
            else:
                os.mkfifo(path)
            if kind not in (stat.S_IFDIR, stat.S_IFLNK) and not member.islnk():
                os.chmod(path, unpacked)
                unpacked = stat.S_IMODE(path.lstat().st_mode)  # as the kernel kept them
            if kind != stat.S_IFDIR:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            recorded[name] = Recorded(member.uid, member.gid, full, unpacked)
    for path, mode, mtime in reversed(directories):  # children first: their mtimes stay set
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return Unpacked(recorded, nodes)


_TAR_TYPES = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.LNKTYPE: stat.S_IFREG,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.FIFOTYPE: stat.S_IFIFO,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
}


def _member_name(raw: str) -> str:
    """A tar member's name relative to the tree (``./usr/bin/`` -> ``usr/bin``)."""
    parts = [part for part in raw.split("/") if part not in ("", ".")]
    if raw.startswith("/") or ".." in parts:
        raise tarfile.TarError(f"{raw}: member outside the tree")
    return "/".join(parts)


def check_unshare(user: str | None = None) -> None:
    """PrerequisiteError (one line: cause, remedy) unless mmdebstrap's unshare mode can work."""
    for tool in ("newuidmap", "newgidmap"):
        if shutil.which(tool) is None:
            raise PrerequisiteError(
                f"{tool} missing: run ./scripts/setup.sh as root (installs uidmap) to build"
                " images as an ordinary user"
            )
    uid = os.getuid()
    if user is None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    for table in SUBORDINATE_ID_TABLES:
        if not has_subordinate_ids(table, user, uid):
            raise PrerequisiteError(
                f"no subordinate ids for {user} in {table}: run"
                f" `./scripts/setup.sh --user {user}` as root"
            )


def has_subordinate_ids(table: Path, user: str, uid: int) -> bool:
    """Whether ``table`` (``/etc/subuid`` format) gives ``user`` (or ``uid``) a range."""
    try:
        lines = table.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) and fields[2].isdigit():
            return int(fields[2]) > 0
    return False


def remove_mmdebstrap_tempdir(note: Path) -> None:
    """Remove the temporary directory a killed mmdebstrap left (named in ``note``), if any."""
    try:
        tempdir = Path(note.read_text().strip())
    except OSError:
        return
    if tempdir.name.startswith("mmdebstrap.") and tempdir.is_dir():
        remove_foreign_tree(tempdir)
    note.unlink(missing_ok=True)


def remove_foreign_tree(path: Path) -> None:
    """Delete a tree whose files may belong to subordinate ids (an unshare-mode chroot).

    As root, directly; otherwise the contents through ``mmdebstrap --unshare-helper``
    (a user namespace mapping the subordinate ids), then what is left as the user.
    """
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path) and os.geteuid() != 0 and shutil.which("mmdebstrap"):
        subprocess.run(
            ["mmdebstrap", "--unshare-helper", "/bin/rm", "-rf", "--one-file-system", str(path)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(path, ignore_errors=True)


def remove_staging(staging: Path) -> None:
    """Remove a killed build's staging directory (what the cache calls for stale ones).

    Also deletes the mmdebstrap temporary directory it names and trees an older harness
    unpacked there as subordinate ids; ImageBuildError if something still cannot go.
    """
    remove_mmdebstrap_tempdir(staging / TEMPDIR_NOTE)
    remove_foreign_tree(staging)
    if os.path.lexists(staging):
        raise ImageBuildError(
            "rootfs", f"cannot remove {staging} (files of other users): delete it as root"
        )


def _mmdebstrap_progress(progress: Progress, line: str) -> None:
    if line.startswith("I: "):
        progress.update(None, line[3:].rstrip("."))
    elif line.startswith("Get:"):
        progress.update(None, "downloading " + " ".join(line.split()[3:5]))


def _deb_identity(deb: Path) -> str:
    """``package version arch`` from a .deb file name as apt names it."""
    name, version, arch = deb.stem.split("_", 2)
    return f"{name} {version.replace('%3a', ':')} {arch}"


def _postinst(deb: Path) -> str:
    result = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "postinst"], capture_output=True, text=True, check=False
    )
    return result.stdout if result.returncode == 0 else ""


@dataclass(frozen=True)
class Alternative:
    """One ``update-alternatives --install`` of a maintainer script."""

    name: str
    link: str
    path: str
    priority: int
    slaves: tuple[tuple[str, str], ...] = ()


def parse_alternatives(script: str) -> list[Alternative]:
    """The alternatives a postinst script installs (entries using shell variables skipped)."""
    text = script.replace("\\\n", " ")
    found = []
    for match in _ALTERNATIVE.finditer(text):
        link, name, path, priority, slave_text = match.groups()
        if "$" in link + name + path + slave_text:
            continue
        slaves = tuple((s.group(1), s.group(2)) for s in _SLAVE.finditer(slave_text))
        found.append(Alternative(name, link, path, int(priority), slaves))
    return found


def apply_alternatives(tree: Path, alternatives: list[Alternative]) -> list[str]:
    """Link each alternative's best present choice (highest priority); returns the links made."""
    best: dict[str, Alternative] = {}
    for alternative in alternatives:
        if not os.path.lexists(tree / alternative.path.lstrip("/")):
            continue
        current = best.get(alternative.name)
        if current is None or alternative.priority > current.priority:
            best[alternative.name] = alternative
    made = []
    for alternative in best.values():
        for link, path in ((alternative.link, alternative.path), *alternative.slaves):
            target = tree / link.lstrip("/")
            if os.path.lexists(target) or not os.path.lexists(tree / path.lstrip("/")):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
            made.append(f"{link} -> {path}")
    return made


def _compile_python(tree: Path, staging: Path, log: TextIO, log_path: Path) -> None:
    """Write the stdlib's .pyc files with a Python of the same version runnable on this host.

    Bytecode does not depend on the CPU, so for a foreign-arch tree a host-arch build of
    the same Debian Python is unpacked next to it and runs through its own dynamic loader.
    """
    versions = sorted(
        p.name
        for p in (tree / "usr" / "bin").glob("python3.*")
        if re.fullmatch(r"python3\.\d+", p.name)
    )
    if not versions:
        raise ImageBuildError("python", "no python3.X interpreter in the tree", log_path)
    version = versions[-1]
    host = ARCHES[host_arch()]
    if (tree / "usr" / "lib" / host.gnu_triplet).is_dir():
        runtime = tree
    else:
        runtime = staging / "host-python"
        _unpack(host.debian_arch, [f"{version}-minimal", f"lib{version}-stdlib"], runtime, log,
                log_path)  # fmt: skip
    libdir = runtime / "usr" / "lib" / host.gnu_triplet
    loaders = sorted(libdir.glob("ld-linux*.so.*"))
    if not loaders:
        raise ImageBuildError("python", f"no dynamic loader in {libdir}", log_path)
    stdlib = tree / "usr" / "lib" / version
    targets = [str(stdlib), *[str(p) for p in (tree / "usr" / "lib" / "python3").glob("*")]]
    run_logged(
        "byte-compile python",
        [
            str(loaders[0]),
            "--library-path",
            str(libdir),
            str(runtime / "usr" / "bin" / version),
            "-m",
            "compileall",
            "-q",
            "-s",
            str(tree),
            "-p",
            "/",
            "-x",
            PYTHON_SKIP,
            *targets,
        ],
        log,
        log_path,
        env={"PYTHONHOME": str(runtime / "usr"), "PYTHONNOUSERSITE": "1"},
    )
    if runtime != tree:
        shutil.rmtree(runtime)


def customise_tree(tree: Path, recipe: Recipe, spec: ArchSpec, flavor: str, key: str) -> None:
    """Do what the skipped maintainer scripts and a boot system would have done."""
    for relative in PRUNE:
        path = tree / relative
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            path.mkdir()
    _prune_docs(tree / "usr" / "share" / "doc")
    for gconv in tree.glob("usr/lib/*/gconv"):
        shutil.rmtree(gconv)

    base_passwd = tree / "usr" / "share" / "base-passwd"
    passwd = (base_passwd / "passwd.master").read_text()
    (tree / "etc" / "passwd").write_text(passwd + "".join(f"{u}\n" for u in EXTRA_USERS))
    shutil.copyfile(base_passwd / "group.master", tree / "etc" / "group")
    (tree / "etc" / "hostname").write_text("guest\n")
    (tree / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n10.0.2.15\tguest\n")
    resolv = tree / "etc" / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_text("# guests reach nothing outside: no DNS\n")
    (tree / "etc" / "fstab").write_text("# the root filesystem is the initramfs\n")
    (tree / "etc" / "viommu-harness-image").write_text(
        f"arch={spec.name}\nflavor={flavor}\nkey={key}\nready_marker={READY_MARKER}\n"
    )
    for directory in ("root/.ssh", "run/sshd", "var/log", "usr/local/sbin"):
        (tree / directory).mkdir(parents=True, exist_ok=True)
    (tree / "root").chmod(0o700)
    (tree / "root" / ".ssh").chmod(0o700)

    init = recipe.init_dir / "init"
    shutil.copyfile(init, tree / "init")
    (tree / "init").chmod(0o755)
    shutil.copyfile(recipe.init_dir / "sshd_config", tree / "etc" / "ssh" / "sshd_config")
    for name in ("sh", "sshd", "ssh-keygen", "ip", "mount", "busybox", "python3"):
        if not any(os.path.lexists(tree / d / name) for d in ("usr/bin", "usr/sbin")):
            raise ImageBuildError("rootfs", f"{name} is missing from the unpacked tree")


def _prune_docs(doc: Path) -> None:
    """Keep only each package's copyright file."""
    if not doc.is_dir():
        return
    for package in doc.iterdir():
        if package.is_dir() and not package.is_symlink():
            for item in package.iterdir():
                if item.name == "copyright":
                    continue
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                else:
                    item.unlink()
