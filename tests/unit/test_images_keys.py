"""Cache keys of guest images: each input changes exactly the keys it determines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.images.arches import ARCHES
from harness.images.recipe import KERNEL_CODE, ROOTFS_CODE, Recipe, parse_package_list, short_key

pytestmark = pytest.mark.tier0

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    """A private copy of the checkout's recipes and recipe code, safe to edit."""
    shutil.copytree(CHECKOUT / "images", tmp_path / "images")
    shutil.copytree(CHECKOUT / "guests" / "init", tmp_path / "guests" / "init")
    code = tmp_path / "code"
    code.mkdir()
    for name in KERNEL_CODE + ROOTFS_CODE:
        shutil.copyfile(CHECKOUT / "harness" / "images" / name, code / name)
    return Recipe(root=tmp_path, code_dir=code)


def keys(recipe: Recipe, arch: str = "x86_64", flavor: str = "default") -> tuple[str, str]:
    spec = ARCHES[arch]
    kernel = short_key(recipe.kernel_inputs(spec, "7.3.4-1~bpo13+1", "gcc 12.2.0"))
    rootfs = short_key(recipe.rootfs_inputs(spec, flavor))
    return kernel, rootfs


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def test_keys_are_stable(recipe: Recipe) -> None:
    assert keys(recipe) == keys(recipe)
    assert len(keys(recipe)[0]) == 16


def test_fragment_option_changes_only_the_kernel_key(recipe: Recipe) -> None:
    kernel, rootfs = keys(recipe)
    append(recipe.kernel_dir / "common.config", "CONFIG_IOMMUFD_DRIVER=y\n")
    new_kernel, new_rootfs = keys(recipe)
    assert new_kernel != kernel
    assert new_rootfs == rootfs


def test_arch_fragment_changes_only_that_arch(recipe: Recipe) -> None:
    x86, arm = keys(recipe, "x86_64")[0], keys(recipe, "arm64")[0]
    append(recipe.kernel_dir / "arm64.config", "CONFIG_ARM_SMMU=y\n")
    assert keys(recipe, "x86_64")[0] == x86
    assert keys(recipe, "arm64")[0] != arm


def test_fragment_comment_changes_nothing(recipe: Recipe) -> None:
    before = keys(recipe)
    append(recipe.kernel_dir / "common.config", "\n# a remark about nothing\n")
    assert keys(recipe) == before


def test_package_list_changes_only_the_rootfs_key(recipe: Recipe) -> None:
    kernel, rootfs = keys(recipe)
    append(recipe.rootfs_dir / "default.list", "ethtool\n")
    assert keys(recipe) == (kernel, keys(recipe)[1])
    assert keys(recipe)[1] != rootfs


def test_init_script_changes_only_the_rootfs_key(recipe: Recipe) -> None:
    kernel, rootfs = keys(recipe)
    append(recipe.init_dir / "init", "# changed\n")
    assert keys(recipe)[0] == kernel
    assert keys(recipe)[1] != rootfs


def test_recipe_code_changes_its_own_artifact_only(recipe: Recipe) -> None:
    kernel, rootfs = keys(recipe)
    append(recipe.code_dir / "kernel.py", "# changed\n")
    assert keys(recipe) == (keys(recipe)[0], rootfs)
    assert keys(recipe)[0] != kernel
    kernel = keys(recipe)[0]
    append(recipe.code_dir / "cpio.py", "# changed\n")
    assert keys(recipe)[0] == kernel
    assert keys(recipe)[1] != rootfs


def test_unrelated_files_change_nothing(recipe: Recipe) -> None:
    before = keys(recipe)
    (recipe.root / "images" / "README").write_text("notes\n")
    (recipe.root / "other.py").write_text("x = 1\n")
    assert keys(recipe) == before


def test_source_version_and_toolchain_change_the_kernel_key(recipe: Recipe) -> None:
    spec = ARCHES["arm64"]
    base = short_key(recipe.kernel_inputs(spec, "7.3.4-1", "gcc 12"))
    assert short_key(recipe.kernel_inputs(spec, "7.3.5-1", "gcc 12")) != base
    assert short_key(recipe.kernel_inputs(spec, "7.3.4-1", "gcc 13")) != base


def test_arches_and_flavors_have_distinct_keys(recipe: Recipe) -> None:
    (recipe.rootfs_dir / "big.list").write_text("gdb\n")
    assert keys(recipe, "x86_64") != keys(recipe, "arm64")
    assert keys(recipe, flavor="default")[1] != keys(recipe, flavor="big")[1]
    assert keys(recipe, flavor="default")[0] == keys(recipe, flavor="big")[0]


def test_unknown_flavor_is_a_config_error(recipe: Recipe) -> None:
    with pytest.raises(ConfigError, match=r"unknown image flavor 'nope'.*default"):
        recipe.packages("nope")
    with pytest.raises(ConfigError, match="unknown image flavor 'base'"):
        recipe.packages("base")


def test_malformed_fragment_is_a_config_error(recipe: Recipe) -> None:
    append(recipe.kernel_dir / "x86_64.config", "IOMMUFD=y\n")
    with pytest.raises(ConfigError, match=r"x86_64.config:\d+: not a kernel option"):
        keys(recipe)


def test_package_lists_parse() -> None:
    text = "# comment\npython3\n  iproute2  # trailing\n\n"
    assert parse_package_list(text, "x.list") == ["python3", "iproute2"]
    with pytest.raises(ConfigError, match=r"x\.list:1: one package per line"):
        parse_package_list("a b\n", "x.list")


def test_flavor_packages_extend_the_base_list(recipe: Recipe) -> None:
    packages = recipe.packages("default")
    for needed in ("python3", "openssh-server", "iproute2", "kmod", "pciutils", "busybox"):
        assert needed in packages
    assert len(packages) == len(set(packages))
