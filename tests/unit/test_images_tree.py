"""Kernels from a user's tree: state keys, builds that never write into the tree, CLI errors,
the kernel flavor fragments, and the kernel identity a run records."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from harness import cli
from harness.errors import ConfigError
from harness.images import kernel as kernel_recipe
from harness.images import pipeline
from harness.images.arches import ARCHES
from harness.images.cache import Cache
from harness.images.choice import KernelChoice, file_identity
from harness.images.progress import NullProgress
from harness.images.recipe import Recipe, short_key
from harness.images.tree import KernelTreeError, check_tree, tree_state

pytestmark = pytest.mark.tier0

CHECKOUT = Path(__file__).resolve().parents[2]
GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")


def make_tree(root: Path) -> Path:
    """A directory that passes for a kernel tree (Makefile, Kconfig, arch/x86, merge script)."""
    root.mkdir(parents=True)
    (root / "Makefile").write_text(
        "VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION = -rc1\n"
    )
    (root / "Kconfig").write_text('mainmenu "fake"\n')
    for arch in ("x86", "arm64"):
        (root / "arch" / arch).mkdir(parents=True)
        (root / "arch" / arch / "Kconfig").write_text("")
    (root / "drivers").mkdir()
    (root / "drivers" / "a.c").write_text("int a;\n")
    merge = root / "scripts" / "kconfig" / "merge_config.sh"
    merge.parent.mkdir(parents=True)
    # merge_config.sh -m -O OUT BASE FRAGMENT...: the fragments appended to OUT/.config
    merge.write_text('#!/bin/sh\nshift; shift; out=$1; shift; shift; cat "$@" >> "$out/.config"\n')
    merge.chmod(0o755)
    return root


def git(tree: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    tree = make_tree(tmp_path / "linux")
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "base")
    return tree


@needs_git
def test_clean_checkout_has_a_stable_key_and_no_dirty_hash(repo: Path) -> None:
    first, second = tree_state(repo), tree_state(repo)
    assert first == second
    assert first.dirty == ""
    assert len(first.commit) == 40
    assert first.describe == first.commit[:12]
    assert first.version == "7.3.4-rc1"


@needs_git
def test_each_kind_of_change_changes_the_key(repo: Path) -> None:
    clean = tree_state(repo)
    (repo / "drivers" / "a.c").write_text("int a = 1;\n")
    edited = tree_state(repo)
    assert edited.commit == clean.commit and edited.dirty not in ("", clean.dirty)
    assert edited.describe.endswith("+dirty")
    (repo / "drivers" / "a.c").write_text("int a = 2;\n")  # same status, other content
    assert tree_state(repo).dirty not in ("", edited.dirty)
    (repo / "drivers" / "a.c").write_text("int a;\n")
    assert tree_state(repo) == clean  # reverted: the clean key again
    (repo / "drivers" / "new.c").write_text("int b;\n")
    untracked = tree_state(repo)
    assert untracked.dirty not in ("", edited.dirty)
    (repo / "drivers" / "new.c").write_text("int c;\n")
    assert tree_state(repo).dirty != untracked.dirty
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "next")
    committed = tree_state(repo)
    assert committed.commit != clean.commit and committed.dirty == ""


@needs_git
def test_reading_the_state_writes_nothing_into_the_checkout(repo: Path) -> None:
    (repo / "drivers" / "a.c").write_text("int a = 1;\n")
    index = repo / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    tree_state(repo)
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before


def test_plain_directory_is_keyed_by_its_manifest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "plain")
    first = tree_state(tree)
    assert first.commit == "" and first.dirty and "not a git tree" in first.describe
    assert tree_state(tree) == first
    source = tree / "drivers" / "a.c"
    info = source.stat()
    os.utime(source, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # touch
    assert tree_state(tree).dirty != first.dirty


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda p: p.write_text("x"), "not a directory"),
        (lambda p: p.mkdir(), "not a kernel tree"),
        (lambda p: (make_tree(p) / ".config").write_text(""), r"in-tree build output \(\.config\)"),
    ],
)
def test_unusable_trees_are_refused_in_one_line(tmp_path: Path, setup, problem: str) -> None:
    path = tmp_path / "tree"
    setup(path)
    with pytest.raises(KernelTreeError, match=problem) as info:
        check_tree(path, "x86")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_cli_names_the_bad_tree(tmp_path: Path, kind: str, capsys) -> None:
    path = tmp_path / "tree"
    if kind == "file":
        path.write_text("x")
    else:
        path.mkdir()
    status = cli.main(["images", "path", "--arch", "x86_64", "--kernel-tree", str(path)])
    err = capsys.readouterr().err.strip()
    assert status == 1
    assert err.count("\n") == 0
    assert err.startswith(f"harness images: error: --kernel-tree {path}: ")


def test_kernel_flavors_and_their_fragments() -> None:
    recipe = Recipe()
    spec = ARCHES["x86_64"]
    assert recipe.kernel_flavors() == ["default", "debug"]
    names = [name for name, _ in recipe.fragments(spec, "debug")]
    assert names == ["common.config", "x86_64.config", "debug.config"]
    with pytest.raises(ConfigError, match="unknown kernel flavor 'nope'"):
        recipe.fragments(spec, "nope")
    default = short_key(recipe.kernel_inputs(spec, "7.3.4-1", "gcc 12"))
    debug = short_key(recipe.kernel_inputs(spec, "7.3.4-1", "gcc 12", "debug"))
    assert default != debug


def test_tree_and_package_kernels_have_their_own_keys_and_build_dirs(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_recipe, "find_source", fake_source)
    package = pipeline.plan("x86_64")
    debug = pipeline.plan("x86_64", kernel_flavor="debug")
    tree = pipeline.plan("x86_64", kernel_tree=repo)
    tree_debug = pipeline.plan("x86_64", kernel_tree=repo, kernel_flavor="debug")
    names = {p.kernel_name for p in (package, debug, tree, tree_debug)}
    dirs = {p.kbuild for p in (package, debug, tree, tree_debug)}
    assert len(names) == 4 and len(dirs) == 4
    assert package.kbuild == "x86_64"  # the package build keeps its directory
    (repo / "drivers" / "a.c").write_text("int a = 1;\n")
    edited = pipeline.plan("x86_64", kernel_tree=repo)
    assert edited.kernel_name != tree.kernel_name and edited.kbuild == tree.kbuild
    identity = tree.kernel_identity()
    assert identity["source"] == f"tree {repo}"
    assert identity["commit"] == tree_state(repo).commit and identity["dirty"] == ""
    assert identity["kernel_flavor"] == "default"
    assert package.kernel_identity()["source"] == "linux-source-7.3 7.3.4-1~test"


def fake_source(*_args: object) -> kernel_recipe.KernelSource:
    """The package source as ``find_source`` reports it, without needing it installed."""
    return kernel_recipe.KernelSource(
        "linux-source-7.3", Path("/nonexistent.tar.xz"), "7.3.4-1~test"
    )


FAKE_MAKE = """#!/bin/sh
# A stand-in for make (the real one would take minutes): does what the kernel build's
# targets leave in O= and logs its arguments; writes only under O=.
for a in "$@"; do case "$a" in O=*) out="${a#O=}";; esac; done
echo "$*" >> "$out/make-calls"
for a in "$@"; do
  case "$a" in
    allnoconfig) : > "$out/.config" ;;
    bzImage) mkdir -p "$out/include/config" "$out/arch/x86/boot"
             echo 7.3.4-rc1-viommu-harness > "$out/include/config/kernel.release"
             echo kernel > "$out/arch/x86/boot/bzImage" ;;
  esac
done
"""


def snapshot(tree: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``tree`` (but ``.git``) with size, mtime and content hash."""
    found = {}
    for path in sorted(tree.rglob("*")):
        if ".git" in path.relative_to(tree).parts or path.is_dir():
            continue
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        found[str(path.relative_to(tree))] = (info.st_size, info.st_mtime_ns, digest)
    return found


@needs_git
def test_a_tree_build_writes_only_into_the_cache(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake make on PATH: a real kernel build takes minutes (the VM suite does one).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(kernel_recipe, "find_source", fake_source)
    before = (snapshot(repo), git_status(repo))
    cache = Cache(tmp_path / "cache")
    the_plan = pipeline.plan("x86_64", kernel_tree=repo)
    built = cache.build(
        "kernel",
        the_plan.kernel_name,
        lambda staging, log: pipeline._build_kernel(
            the_plan, cache, staging, log, NullProgress(), 1
        ),
        NullProgress(),
    )
    assert (snapshot(repo), git_status(repo)) == before
    calls = (cache.root / "kbuild" / the_plan.kbuild / "make-calls").read_text().splitlines()
    assert len(calls) == 3 and all(f"-C {repo} " in call for call in calls)
    meta = (built / "meta.json").read_text()
    assert f'"tree": "{repo}"' in meta and '"kernel_flavor": "default"' in meta
    assert (built / "bzImage").read_text() == "kernel\n"


def git_status(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_kernel_choice_refuses_contradictions(tmp_path: Path) -> None:
    image = tmp_path / "bzImage"
    image.write_bytes(b"k")
    with pytest.raises(ConfigError, match="exclude each other"):
        KernelChoice(path=image, tree=tmp_path)
    with pytest.raises(ConfigError, match="--kernel-flavor builds a kernel"):
        KernelChoice(path=image, flavor="debug")
    with pytest.raises(ConfigError, match="no such file"):
        KernelChoice(path=tmp_path / "missing")
    assert KernelChoice().is_default and not KernelChoice(flavor="debug").is_default
    identity = file_identity(image)
    assert identity["sha256"] == hashlib.sha256(b"k").hexdigest()
    assert identity["source"] == f"file {image}"


@needs_git
def test_two_clones_at_one_commit_share_the_kernel_key(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel_recipe, "find_source", fake_source)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    first, second = (
        pipeline.plan("x86_64", kernel_tree=repo),
        pipeline.plan("x86_64", kernel_tree=clone),
    )
    assert first.kernel_name == second.kernel_name
    assert first.kbuild != second.kbuild  # each checkout builds in its own directory
