"""Image builds as an ordinary user: tarball unpacking, owners in the archive, clean-up,
prerequisite errors, and tier-3 host checks that say when root is needed."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from harness.images import rootfs
from harness.images.cache import Cache
from harness.images.cpio import read_archive, write_archive
from harness.images.errors import ImageBuildError, PrerequisiteError
from harness.tier3 import hostcheck

pytestmark = pytest.mark.tier0


def _add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, **fields: Any) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    data = fields.pop("data", b"")
    for key, value in fields.items():
        setattr(info, key, value)
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def make_tarball(path: Path) -> None:
    """A small root filesystem as mmdebstrap's tar output lays it out."""
    with tarfile.open(path, "w") as tar:
        _add(tar, "./dev/", tarfile.DIRTYPE, 0o755)
        _add(tar, "./dev/console", tarfile.CHRTYPE, 0o666, devmajor=5, devminor=1)
        _add(tar, "./", tarfile.DIRTYPE, 0o755)
        _add(tar, "./usr/", tarfile.DIRTYPE, 0o755)
        _add(tar, "./usr/bin/", tarfile.DIRTYPE, 0o755)
        _add(tar, "./usr/bin/chage", tarfile.REGTYPE, 0o2755, gid=42, data=b"\x7fELF")
        _add(tar, "./usr/bin/perl", tarfile.REGTYPE, 0o755, data=b"perl")
        _add(tar, "./usr/bin/perl5", tarfile.LNKTYPE, 0o755, linkname="./usr/bin/perl")
        _add(tar, "./bin", tarfile.SYMTYPE, 0o777, linkname="usr/bin")
        _add(tar, "./proc/", tarfile.DIRTYPE, 0o555)
        _add(tar, "./locked/", tarfile.DIRTYPE, 0o555)
        _add(tar, "./locked/file", tarfile.REGTYPE, 0o444, data=b"ro")
        _add(tar, "./tmp/", tarfile.DIRTYPE, 0o1777)
        _add(tar, "./var/lib/apt/lists/partial/", tarfile.DIRTYPE, 0o700, uid=42)
        _add(tar, "./run/initctl", tarfile.FIFOTYPE, 0o600)


def test_tarball_unpacks_as_the_user_with_owners_kept_aside(tmp_path: Path) -> None:
    archive, tree = tmp_path / "tree.tar", tmp_path / "tree"
    make_tarball(archive)
    unpacked = rootfs.unpack_tarball(archive, tree)
    assert not (tree / "dev" / "console").exists()
    assert [(n.name, stat.S_ISCHR(n.mode), n.rdev_major, n.rdev_minor) for n in unpacked.nodes] == [
        ("dev/console", True, 5, 1)
    ]
    for path in [tree, *tree.rglob("*")]:
        assert path.lstat().st_uid == os.getuid(), path
    assert stat.S_IMODE((tree / "locked").stat().st_mode) == 0o755  # the user can delete in it
    assert (tree / "usr/bin/perl5").stat().st_ino == (tree / "usr/bin/perl").stat().st_ino
    assert os.readlink(tree / "bin") == "usr/bin"
    assert stat.S_ISFIFO((tree / "run/initctl").lstat().st_mode)
    assert (tree / "usr/bin/chage").stat().st_mtime == 1_700_000_000
    chage = unpacked.recorded["usr/bin/chage"]
    assert (chage.uid, chage.gid, chage.mode) == (0, 42, stat.S_IFREG | 0o2755)
    assert unpacked.recorded["var/lib/apt/lists/partial"].uid == 42


def test_archive_of_an_unpacked_tree_has_the_tarballs_owners(tmp_path: Path) -> None:
    archive, tree = tmp_path / "tree.tar", tmp_path / "tree"
    make_tarball(archive)
    unpacked = rootfs.unpack_tarball(archive, tree)
    (tree / "etc").mkdir()
    (tree / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "usr/bin/perl").chmod(0o700)  # changed after unpacking: the new mode counts
    output = tmp_path / "out.cpio"
    write_archive(tree, output, unpacked.nodes, unpacked.recorded)
    members = {m.name: m for m in read_archive(output.open("rb"))}
    assert (members["usr/bin/chage"].uid, members["usr/bin/chage"].gid) == (0, 42)
    assert stat.S_IMODE(members["usr/bin/chage"].mode) == 0o2755
    assert stat.S_IMODE(members["locked"].mode) == 0o555
    assert stat.S_IMODE(members["proc"].mode) == 0o555
    assert stat.S_IMODE(members["tmp"].mode) == 0o1777
    assert members["var/lib/apt/lists/partial"].uid == 42
    assert stat.S_IMODE(members["usr/bin/perl"].mode) == 0o700
    assert (members["etc/passwd"].uid, members["etc/passwd"].gid) == (0, 0)
    assert members["usr/bin/perl5"].data == b"perl"
    console = members["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)
    if os.getuid() != 0:
        assert all(m.uid in (0, 42) for m in members.values())
    shutil.rmtree(tree)  # nothing the user cannot delete


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "./usr/../../x"])
def test_members_outside_the_tree_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, name, tarfile.REGTYPE, 0o644, data=b"x")
    with pytest.raises(tarfile.TarError, match="outside the tree"):
        rootfs.unpack_tarball(archive, tmp_path / "tree")
    assert not (tmp_path / "escape").exists()


def test_unpack_runs_mmdebstrap_in_unshare_mode_for_a_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(step: str, argv: list[str], log: Any, log_path: Path, **kw: Any) -> None:
        seen.append(argv)
        kw["on_line"]("I: using /tmp/mmdebstrap.AbC123 as tempdir")
        assert (tmp_path / rootfs.TEMPDIR_NOTE).read_text() == "/tmp/mmdebstrap.AbC123\n"
        make_tarball(Path(argv[-2]))

    monkeypatch.setattr(rootfs, "run_logged", fake_run)
    monkeypatch.setattr(rootfs.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(rootfs, "check_unshare", lambda: None)
    unpacked = rootfs._unpack("amd64", ["bash"], tmp_path / "tree", io.StringIO(), tmp_path / "l")
    argv = seen[0]
    assert "--mode=unshare" in argv and "--format=tar" in argv
    assert argv[-2] == str(tmp_path / "tree.tar")
    assert not (tmp_path / "tree.tar").exists()
    assert not (tmp_path / rootfs.TEMPDIR_NOTE).exists()
    assert "usr/bin/chage" in unpacked.recorded


def test_a_failed_mmdebstrap_leaves_no_tarball(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(step: str, argv: list[str], log: Any, log_path: Path, **kw: Any) -> None:
        Path(argv[-2]).write_bytes(b"partial")
        raise ImageBuildError("mmdebstrap", "exited with status 1", log_path)

    monkeypatch.setattr(rootfs, "run_logged", failing)
    with pytest.raises(ImageBuildError, match="exited with status 1"):
        rootfs._unpack("amd64", ["bash"], tmp_path / "tree", io.StringIO(), tmp_path / "l")
    assert not (tmp_path / rootfs.TEMPDIR_NOTE).exists()


def test_missing_newuidmap_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rootfs.shutil, "which", lambda tool: None)
    with pytest.raises(PrerequisiteError) as error:
        rootfs.check_unshare()
    assert str(error.value).startswith("newuidmap missing: run ./scripts/setup.sh as root")
    assert "\n" not in str(error.value)


def test_missing_subordinate_ids_name_the_user_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\n")
    subgid.write_text("bob:100000:65536\n")
    monkeypatch.setattr(rootfs, "SUBORDINATE_ID_TABLES", (subuid, subgid))
    monkeypatch.setattr(rootfs.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(PrerequisiteError) as error:
        rootfs.check_unshare("bob")
    assert str(error.value) == (
        f"no subordinate ids for bob in {subuid}: run `./scripts/setup.sh --user bob` as root"
    )
    with pytest.raises(PrerequisiteError, match=f"no subordinate ids for alice in {subgid}"):
        rootfs.check_unshare("alice")
    subgid.write_text("alice:100000:65536\n")
    rootfs.check_unshare("alice")


def test_subordinate_id_tables_are_read_by_name_or_uid(tmp_path: Path) -> None:
    table = tmp_path / "subuid"
    table.write_text("# comment\nalice:100000:65536\n1002:165536:65536\ncarol:231072:0\n")
    assert rootfs.has_subordinate_ids(table, "alice", 1001)
    assert rootfs.has_subordinate_ids(table, "bob", 1002)
    assert not rootfs.has_subordinate_ids(table, "carol", 1003)
    assert not rootfs.has_subordinate_ids(tmp_path / "absent", "alice", 1001)


def writes_file(staging: Path, log: Path) -> dict[str, Any]:
    (staging / "artifact.bin").write_bytes(b"data")
    return {"kind": "test"}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_build_removes_what_killed_builds_left(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    tmp = tmp_path / "tmp"
    same = tmp / "rootfs-x86_64-new.99999999"
    dead = tmp / f"rootfs-x86_64-old.{_dead_pid()}"
    live = tmp / f"rootfs-arm64-other.{os.getpid()}"
    kernel = tmp / f"kernel-x86_64-old.{_dead_pid()}"
    for directory in (same, dead, live, kernel):
        (directory / "tree").mkdir(parents=True)
    removed: list[Path] = []

    def remove(path: Path) -> None:
        removed.append(path)
        shutil.rmtree(path)

    cache.build("rootfs", "x86_64-new", writes_file, remove_stale=remove)
    assert sorted(removed) == sorted([same, dead])
    assert live.is_dir() and kernel.is_dir()  # a running build; another kind's
    cache.build("kernel", "x86_64-new", writes_file)
    assert not kernel.exists()


def test_remove_staging_deletes_the_tempdir_a_killed_mmdebstrap_named(tmp_path: Path) -> None:
    staging = tmp_path / "rootfs-x86_64-k.123"
    (staging / "tree" / "usr").mkdir(parents=True)
    tempdir = tmp_path / "mmdebstrap.XyZ"
    (tempdir / "etc").mkdir(parents=True)
    other = tmp_path / "precious"
    other.mkdir()
    (staging / rootfs.TEMPDIR_NOTE).write_text(f"{tempdir}\n")
    rootfs.remove_staging(staging)
    assert not staging.exists() and not tempdir.exists()
    (staging).mkdir()
    (staging / rootfs.TEMPDIR_NOTE).write_text(f"{other}\n")  # not mmdebstrap's: kept
    rootfs.remove_staging(staging)
    assert other.is_dir() and not staging.exists()


def test_remove_staging_says_when_something_cannot_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "rootfs-x86_64-k.123"
    staging.mkdir()
    monkeypatch.setattr(rootfs, "remove_foreign_tree", lambda path: None)
    with pytest.raises(ImageBuildError, match=f"cannot remove {staging} .*delete it as root"):
        rootfs.remove_staging(staging)


BDF = "0000:00:01.0"


def _device(driver: str | None) -> hostcheck.HostDevice:
    return hostcheck.HostDevice(BDF, True, driver=driver, iommu_group="7", vfio_cdev="/x")


def test_binding_to_vfio_pci_as_a_user_says_root_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bus/pci/drivers/vfio-pci").mkdir(parents=True)
    monkeypatch.setattr(hostcheck, "_is_root", lambda: False)
    problem = hostcheck.device_problem(_device("e1000e"), tmp_path)
    assert problem is not None
    assert problem.endswith(f": needs root to bind {BDF} to vfio-pci")
    assert "bound to e1000e, not vfio-pci (bind it: echo vfio-pci" in problem
    monkeypatch.setattr(hostcheck, "_is_root", lambda: True)
    assert "needs root" not in str(hostcheck.device_problem(_device("e1000e"), tmp_path))


def test_a_vfio_device_the_user_cannot_open_says_root_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tmp_path / "vfio3"
    node.touch()
    assert hostcheck.access_problem(node, BDF) is None
    assert hostcheck.access_problem(tmp_path / "absent", BDF) is None
    monkeypatch.setattr(hostcheck.os, "access", lambda path, mode: False)
    problem = hostcheck.access_problem(node, BDF)
    assert problem is not None and problem.startswith(f"no read/write access to {node} (")
    assert f"which QEMU needs for {BDF}: needs root to give" in problem
