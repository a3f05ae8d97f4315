"""``harness bisect`` for real: kernel builds of a git tree, guests, ``git bisect run``.

The tree is a git repository of the extracted ``linux-source-7.3`` kept in the image
cache (``test-trees/bisect-linux-7.3``, tag ``base``; made once by copying the source and
committing it, or cloned from the tree ``/tmp/kernel-git-tree.txt`` names).  Each run
resets the branch ``bisect-test`` to ``base`` and commits a series of five small changes
to ``drivers/iommu/iommufd``; the third makes ``IOMMU_VIOMMU_ALLOC`` answer EOPNOTSUPP for
a missing nest parent where 7.3 answers ENOENT, which ``tier1-viommu``'s row ``vIOMMU:
hwpt_id 0`` checks.  ``harness bisect`` must name that commit, report that row, and leave
the tree on ``bisect-test`` at its tip.

The commits have fixed dates, so their ids (and the kernels' cache keys) are the same on
every run: the first run builds the tree from scratch (10.5 min measured on 2 cores, ccache
cold; its first run here took 28 min in all, mostly waiting for other builds' kernel-build
lock) and each step incrementally (15-19 s: the kbuild directory and ccache are kept per
tree path); later runs find the kernels in the cache (~2 min).  Nightly only (``slow``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.images import kernel as kernel_recipe
from harness.images.cache import Cache
from harness.images.progress import NullProgress

pytestmark = [pytest.mark.slow, pytest.mark.nightly, pytest.mark.tier1, pytest.mark.x86_64]

SHARED_TREE_NOTE = Path("/tmp/kernel-git-tree.txt")
BRANCH = "bisect-test"
ENV = {
    "GIT_AUTHOR_NAME": "viommu-harness",
    "GIT_AUTHOR_EMAIL": "bisect-test@viommu-harness.invalid",
    "GIT_COMMITTER_NAME": "viommu-harness",
    "GIT_COMMITTER_EMAIL": "bisect-test@viommu-harness.invalid",
    "GIT_AUTHOR_DATE": "2026-12-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-12-01T00:00:00Z",
}
COMMENT = "/* bisect test {n}: a change that changes nothing */\n"
PLANTED_FILE = "drivers/iommu/iommufd/viommu.c"
PLANTED_OLD = """	hwpt_paging = iommufd_get_hwpt_paging(ucmd, cmd->hwpt_id);
	if (IS_ERR(hwpt_paging)) {
		rc = PTR_ERR(hwpt_paging);"""
PLANTED_NEW = """	hwpt_paging = iommufd_get_hwpt_paging(ucmd, cmd->hwpt_id);
	if (IS_ERR(hwpt_paging)) {
		rc = -EOPNOTSUPP;"""
#: (subject, file, edit): the series on top of ``base``; index 2 is the planted one
SERIES = (
    ("iommufd: note in main.c", "drivers/iommu/iommufd/main.c", None),
    ("iommufd: note in hw_pagetable.c", "drivers/iommu/iommufd/hw_pagetable.c", None),
    ("iommufd: viommu alloc answers EOPNOTSUPP for a bad hwpt_id", PLANTED_FILE, "planted"),
    ("iommufd: note in device.c", "drivers/iommu/iommufd/device.c", None),
    ("iommufd: note in io_pagetable.c", "drivers/iommu/iommufd/io_pagetable.c", None),
)
PLANTED = 2
ROW = "vIOMMU: hwpt_id 0"


def git(tree: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout.strip()


def _make_repo(tree: Path, cache: Cache) -> None:
    """A git repository of the 7.3 source at ``tree`` with the tag ``base``."""
    staging = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    shared = SHARED_TREE_NOTE.read_text().strip() if SHARED_TREE_NOTE.is_file() else ""
    if shared and (Path(shared) / ".git").exists():
        subprocess.run(["git", "clone", "-q", shared, str(staging)], check=True)
        git(staging, "tag", "-f", "base", "HEAD")
    else:
        source = kernel_recipe.extract_source(cache, kernel_recipe.find_source(), NullProgress())
        subprocess.run(["cp", "-a", str(source), str(staging)], check=True)
        git(staging, "init", "-q", "-b", "main")
        git(staging, "add", "-A", "-f")  # Debian's .gitignore ignores the top level
        git(staging, "commit", "-q", "-m", "Linux 7.3 (linux-source-7.3)")
        git(staging, "tag", "base")
    staging.rename(tree)


def _series(tree: Path) -> list[str]:
    """Reset ``bisect-test`` to ``base`` and commit the series; the commit ids."""
    git(tree, "checkout", "-q", "-f", "-B", BRANCH, "base")
    git(tree, "clean", "-q", "-f", "-d", "-x")
    ids = []
    for n, (subject, name, edit) in enumerate(SERIES):
        path = tree / name
        text = path.read_text()
        if edit == "planted":
            assert PLANTED_OLD in text, f"{name} changed: the planted edit no longer applies"
            text = text.replace(PLANTED_OLD, PLANTED_NEW, 1)
        else:
            text += COMMENT.format(n=n)
        path.write_text(text)
        git(tree, "commit", "-q", "-a", "-m", subject)
        ids.append(git(tree, "rev-parse", "HEAD"))
    return ids


@pytest.fixture
def kernel_git_tree() -> Path:
    cache = Cache()
    tree = cache.root / "test-trees" / "bisect-linux-7.3"
    if not (tree / ".git").is_dir():
        _make_repo(tree, cache)
    return tree


def test_bisect_names_the_planted_commit(kernel_git_tree: Path, tmp_path: Path) -> None:
    tree = kernel_git_tree
    ids = _series(tree)
    argv = [sys.executable, "-m", "harness", "bisect", "--good", "base", "--bad", BRANCH,
            "--kernel-tree", str(tree), "--arch", "x86_64", "--artifacts", str(tmp_path),
            "--json", "tier1-viommu"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3 * 3600)
    assert done.returncode == 0, f"harness bisect: {done.stderr[-3000:]}"
    outcome = json.loads(done.stdout)
    (run_dir,) = tmp_path.iterdir()
    (run_dir / "outcome-stdout.json").write_text(done.stdout)  # kept with the artifacts
    assert outcome["first_bad"] == ids[PLANTED], outcome["steps"]
    assert outcome["subject"] == SERIES[PLANTED][0]
    assert [row["name"] for row in outcome["failing"]] == [ROW]
    assert outcome["failing"][0]["expected"] != outcome["failing"][0]["got"]
    # the endpoints were verified: the tip fails that row, base passes
    first, second = outcome["steps"][:2]
    assert (first["commit"], first["state"]) == (ids[-1], "bad")
    assert (second["commit"], second["state"]) == (git(tree, "rev-parse", "base"), "good")
    # the tree is back where it started, with nothing written into it
    assert git(tree, "symbolic-ref", "HEAD") == f"refs/heads/{BRANCH}"
    assert git(tree, "rev-parse", "HEAD") == ids[-1]
    assert git(tree, "status", "--porcelain", "--untracked-files=all") == ""
    assert not (tree / ".git" / "BISECT_START").exists()
    assert outcome["restored"].startswith(f"branch {BRANCH} ")
