"""A guest kernel built from a kernel tree (``--kernel-tree``) boots and is the one recorded.

The tree is a plain copy of the extracted package source kept in the image cache
(``test-trees/``), so after the first run (a from-scratch build, ~7 min for x86_64 on 2
cores) the build is a cache hit and the test costs one boot.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness.guest import Guest
from harness.images import kernel as kernel_recipe
from harness.images.cache import Cache
from harness.images.choice import KernelChoice
from harness.images.progress import NullProgress
from harness.images.tree import tree_state
from harness.profiles import guest_machine
from harness.scenarios import runner

pytestmark = [pytest.mark.slow, pytest.mark.nightly, pytest.mark.tier1]


def _test_tree(cache: Cache) -> Path:
    """A copy of the package's source under the cache (made once, then reused as is)."""
    source = kernel_recipe.extract_source(cache, kernel_recipe.find_source(), NullProgress())
    tree = cache.root / "test-trees" / source.name
    if not (tree / "Makefile").is_file():
        staging = tree.with_name(tree.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(source), str(staging)], check=True)
        staging.rename(tree)
    return tree


def test_tree_kernel_boots_and_is_recorded(tmp_path: Path) -> None:
    cache = Cache()
    tree = _test_tree(cache)
    before = tree_state(tree)
    image = KernelChoice(tree=tree).image("x86_64")
    assert tree_state(tree) == before  # the build wrote nothing into the tree
    identity = image.kernel_identity
    assert identity["source"] == f"tree {tree}" and identity["dirty"] == before.dirty
    assert image.kernel.is_relative_to(cache.root / "kernel")
    machine = guest_machine(image, None, [])
    with Guest(machine, tmp_path, ready_marker=image.ready_marker) as guest:
        uname = guest.run("uname -r").stdout.strip()
        config = guest.run(runner.CONFIG_SHA256_COMMAND).stdout.strip()
    assert uname == identity["release"]
    assert config == identity["config_sha256"]
