"""The selftest build's cache key and prerequisite checks (no compiler run)."""

from __future__ import annotations

import pytest

from harness.errors import PrerequisiteError
from harness.images.arches import arch_spec
from harness.kselftest import build


def _inputs(**changes: object) -> dict[str, object]:
    inputs: dict[str, object] = {
        "source": "linux-source-7.3=7.3.4-1~bpo13+1",
        "arch": "arm64",
        "cross_compile": "aarch64-linux-gnu-",
        "compiler": "aarch64-linux-gnu-gcc (Debian 12.2.0-14) 12.2.0",
        "libraries": {"libcap-dev:arm64": "1:2.66-4", "uuid-dev:arm64": "2.38.1-5"},
        "suites": build.SUITES,
        "recipe": "0" * 64,
    }
    inputs.update(changes)
    return inputs


def test_key_follows_source_compiler_libraries_and_recipe() -> None:
    spec = arch_spec("arm64")
    base = build.artifact_name(spec, _inputs())
    assert base.startswith("arm64-") and len(base) == len("arm64-") + 16
    assert build.artifact_name(spec, _inputs()) == base
    for change in (
        {"source": "linux-source-7.3=7.3.5-1"},
        {"compiler": "aarch64-linux-gnu-gcc 13"},
        {"libraries": {"libcap-dev:arm64": "1:2.67", "uuid-dev:arm64": "2.38.1-5"}},
        {"recipe": "1" * 64},
    ):
        assert build.artifact_name(spec, _inputs(**change)) != base, change


def test_missing_compiler_or_library_is_a_prerequisite_error_naming_it() -> None:
    spec = arch_spec("arm64")
    with pytest.raises(PrerequisiteError, match="aarch64-linux-gnu-gcc not found"):
        build._check_prerequisites(spec, _inputs(compiler="missing"))
    libraries = {"libcap-dev:arm64": "missing", "uuid-dev:arm64": "2.38.1-5"}
    with pytest.raises(PrerequisiteError, match=r"libcap-dev:arm64.*add-architecture arm64"):
        build._check_prerequisites(spec, _inputs(libraries=libraries))
    build._check_prerequisites(spec, _inputs())


def test_every_suite_lists_the_binaries_its_makefile_builds() -> None:
    assert build.SUITES["iommu"] == ("iommufd", "iommufd_fail_nth")
    assert "vfio_pci_driver_test" in build.SUITES["vfio"] and len(build.SUITES["vfio"]) == 7
