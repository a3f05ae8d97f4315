"""Root filesystem recipe: newc archives, alternatives, tree customisation and the init."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from harness.images.arches import ARCHES, READY_MARKER
from harness.images.cpio import Entry, read_archive, write_archive, write_files
from harness.images.errors import ImageBuildError
from harness.images.recipe import Recipe
from harness.images.rootfs import (
    BOOT_NODES,
    apply_alternatives,
    customise_tree,
    parse_alternatives,
)

pytestmark = pytest.mark.tier0

CHECKOUT = Path(__file__).resolve().parents[2]
INIT = CHECKOUT / "guests" / "init" / "init"


def make_tree(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    (root / "usr" / "bin" / "hello").chmod(0o755)
    (root / "usr" / "bin" / "odd").write_bytes(b"12345")
    (root / "bin").symlink_to("usr/bin")
    os.mkfifo(root / "fifo")


def test_archive_round_trip(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    output = tmp_path / "out.cpio"
    size = write_archive(tree, output, BOOT_NODES)
    assert size == output.stat().st_size
    assert size % 4 == 0
    members = {m.name: m for m in read_archive(output.open("rb"))}
    assert list(members)[:3] == ["bin", "fifo", "usr"]
    assert members["usr/bin/hello"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(members["usr/bin/hello"].mode) == 0o755
    assert members["usr/bin/odd"].data == b"12345"
    assert stat.S_ISLNK(members["bin"].mode) and members["bin"].data == b"usr/bin"
    assert stat.S_ISFIFO(members["fifo"].mode)
    console = members["dev/console"]
    assert stat.S_ISCHR(console.mode) and (console.rdev_major, console.rdev_minor) == (5, 1)
    assert stat.S_ISDIR(members["dev"].mode)


def test_parents_come_before_children(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    output = tmp_path / "out.cpio"
    write_archive(tree, output)
    seen: set[str] = set()
    for member in read_archive(output.open("rb")):
        parent = os.path.dirname(member.name)
        assert parent == "" or parent in seen, member.name
        seen.add(member.name)


def test_extra_entries_do_not_duplicate_tree_entries(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "dev").mkdir(parents=True)
    output = tmp_path / "out.cpio"
    write_archive(tree, output, [Entry("dev", stat.S_IFDIR | 0o700), *BOOT_NODES[1:]])
    names = [m.name for m in read_archive(output.open("rb"))]
    assert names.count("dev") == 1
    assert "dev/console" in names


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_gnu_cpio_reads_the_archive(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    output = tmp_path / "out.cpio"
    write_archive(tree, output, BOOT_NODES)
    listing = subprocess.run(
        ["cpio", "-it", "--quiet"], stdin=output.open("rb"), capture_output=True, check=True
    ).stdout.decode()
    assert set(listing.split()) >= {"usr/bin/hello", "bin", "dev/console", "fifo"}


def test_early_cpio_of_files_concatenates_with_an_initramfs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    make_tree(tree)
    base = tmp_path / "base.cpio"
    write_archive(tree, base)
    early = io.BytesIO()
    write_files({"kernel/firmware/acpi/IORT.aml": b"IORT...."}, early)
    assert len(early.getvalue()) % 4 == 0
    stream = io.BytesIO(early.getvalue() + base.read_bytes())
    first = [(m.name, m.data) for m in read_archive(stream)]
    assert first == [
        ("kernel", b""),
        ("kernel/firmware", b""),
        ("kernel/firmware/acpi", b""),
        ("kernel/firmware/acpi/IORT.aml", b"IORT...."),
    ]
    assert "usr/bin/hello" in [m.name for m in read_archive(stream)]


def test_truncated_archive_is_rejected() -> None:
    with pytest.raises(ValueError, match="bad cpio header"):
        list(read_archive(io.BytesIO(b"070701" + b"0" * 20)))


POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = "configure" ]; then
    update-alternatives --install /usr/bin/awk awk /usr/bin/mawk 5 \\
        --slave /usr/share/man/man1/awk.1.gz awk.1.gz /usr/share/man/man1/mawk.1.gz \\
        --slave /usr/bin/nawk nawk /usr/bin/mawk
    update-alternatives --quiet --install /usr/bin/awk awk /usr/bin/gawk 10
    update-alternatives --install /usr/bin/$name x /usr/bin/y 1
fi
"""


def test_alternatives_are_parsed_from_postinst() -> None:
    found = parse_alternatives(POSTINST)
    assert [(a.name, a.link, a.path, a.priority) for a in found] == [
        ("awk", "/usr/bin/awk", "/usr/bin/mawk", 5),
        ("awk", "/usr/bin/awk", "/usr/bin/gawk", 10),
    ]
    assert found[0].slaves == (
        ("/usr/share/man/man1/awk.1.gz", "/usr/share/man/man1/mawk.1.gz"),
        ("/usr/bin/nawk", "/usr/bin/mawk"),
    )


def test_alternatives_pick_the_best_present_choice(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "mawk").write_text("")
    made = apply_alternatives(tmp_path, parse_alternatives(POSTINST))
    assert os.readlink(tmp_path / "usr" / "bin" / "awk") == "/usr/bin/mawk"
    assert os.readlink(tmp_path / "usr" / "bin" / "nawk") == "/usr/bin/mawk"
    assert not (tmp_path / "usr" / "share").exists()
    assert made == ["/usr/bin/awk -> /usr/bin/mawk", "/usr/bin/nawk -> /usr/bin/mawk"]
    (tmp_path / "usr" / "bin" / "gawk").write_text("")
    assert apply_alternatives(tmp_path, parse_alternatives(POSTINST)) == []


def fake_unpacked_tree(root: Path) -> None:
    for directory in ("etc/ssh", "usr/share/base-passwd", "usr/share/doc/pkg", "usr/bin"):
        (root / directory).mkdir(parents=True)
    (root / "usr/share/base-passwd/passwd.master").write_text("root:*:0:0:root:/root:/bin/bash\n")
    (root / "usr/share/base-passwd/group.master").write_text("root:*:0:\n")
    (root / "usr/share/doc/pkg/copyright").write_text("GPL\n")
    (root / "usr/share/doc/pkg/changelog.gz").write_text("x")
    (root / "usr/share/man/man1").mkdir(parents=True)
    (root / "usr/share/man/man1/x.1.gz").write_text("x")
    for tool in ("sh", "sshd", "ssh-keygen", "ip", "mount", "busybox", "python3"):
        (root / "usr/bin" / tool).write_text("")


def test_customise_tree_installs_init_accounts_and_prunes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    fake_unpacked_tree(tree)
    customise_tree(tree, Recipe(), ARCHES["arm64"], "default", "arm64-default-0123")
    assert (tree / "init").read_bytes() == INIT.read_bytes()
    assert os.access(tree / "init", os.X_OK)
    assert "PermitRootLogin prohibit-password" in (tree / "etc/ssh/sshd_config").read_text()
    assert "\nsshd:x:100:65534:" in (tree / "etc/passwd").read_text()
    assert (tree / "usr/share/doc/pkg/copyright").exists()
    assert not (tree / "usr/share/doc/pkg/changelog.gz").exists()
    assert not any((tree / "usr/share/man").iterdir())
    assert stat.S_IMODE((tree / "root/.ssh").stat().st_mode) == 0o700
    assert "key=arm64-default-0123" in (tree / "etc/viommu-harness-image").read_text()


def test_customise_tree_refuses_a_tree_without_sshd(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    fake_unpacked_tree(tree)
    (tree / "usr/bin/sshd").unlink()
    with pytest.raises(ImageBuildError, match="sshd is missing from the unpacked tree"):
        customise_tree(tree, Recipe(), ARCHES["x86_64"], "default", "k")


@pytest.mark.parametrize("shell", ["dash", "sh", "busybox"])
def test_init_is_valid_posix_sh(shell: str) -> None:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} not installed")
    argv = [path, "sh", "-n", str(INIT)] if shell == "busybox" else [path, "-n", str(INIT)]
    subprocess.run(argv, check=True)


def test_init_prints_the_marker_and_reads_the_fw_cfg_key() -> None:
    text = INIT.read_text()
    assert f"READY_MARKER={READY_MARKER}\n" in text
    assert "/sys/firmware/qemu_fw_cfg/by_name/opt/viommu-harness/authorized_keys/raw" in text
    assert "viommu.authorized_key" in text
    assert "/sys/kernel/debug" in text
