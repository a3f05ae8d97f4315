"""Kernel-selftest cells in a qualification matrix: expansion, the cell's run, the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.kselftest.expected import Expectation
from harness.kselftest.matrix import MATRIX
from harness.kselftest.runner import BinaryRun, ConfigRun, _judge_all
from harness.kselftest.tap import parse
from harness.qualify import avocado_test, report, selftests
from harness.qualify.matrix import KSELFTEST, Variant, expand
from tests.unit.test_qualify import REGISTRY, FakeAvocadoTest, _results

pytestmark = pytest.mark.tier0

#: one binary's TAP: a pass, a failure the expected-results entry below lists, a skip
TAP = """\
TAP version 13
1..3
ok 1 iommufd_ioas.mock_domain.map
not ok 2 iommufd_ioas.mock_domain.dmabuf_simple
#  Expected 0 (0) == rc (-1)
ok 3 iommufd.no_viommu.alloc # SKIP no vIOMMU in this variant
"""
EXPECTED = [
    Expectation(
        "iommufd", ("*.dmabuf_simple",), ("*",), "fail", "kernel bug: the fd is not returned"
    )
]


def _expand(section: dict[str, Any], **extra: Any) -> list[Variant]:
    return list(expand({"name": "k", KSELFTEST: section, **extra}, REGISTRY).variants)


def test_section_alone_gives_a_variant_per_configuration_of_each_arch() -> None:
    variants = _expand({"suite": "all"})
    labels = [(v.arch, v.options_label) for v in variants]
    assert labels == [(c.arch, c.label) for arch in ("x86_64", "arm64") for c in MATRIX[arch]]
    assert all(v.scenario == KSELFTEST for v in variants)
    # the mock suite runs once per arch: in its first configuration
    assert [v.params["mock"] for v in variants] == [True, False, False] * 2
    assert variants[0].id == "kselftest.x86_64.vtd-scalable-flts"
    assert variants[0].viommu == "vtd" and variants[0].viommu_options == {"intremap": "on"}


def test_configs_tests_and_axes() -> None:
    variants = _expand(
        {"suite": "vfio", "configs": ["vtd-legacy", "smmuv3-s2"], "tests": ["vfio_pci_device_test"],
         "timeout": 60},
        qemu={"ten": "10", "eleven": "11"},
        exclude=[{"options": "smmuv3-s2", "qemu": "eleven"}],
    )  # fmt: skip
    assert [v.id for v in variants] == [
        "kselftest.x86_64.vtd-legacy.qemu-ten",
        "kselftest.x86_64.vtd-legacy.qemu-eleven",
        "kselftest.arm64.smmuv3-s2.qemu-ten",
    ]
    assert variants[1].qemu == "11" and variants[0].timeout == 60
    assert variants[0].params == {"suite": "vfio", "tests": ["vfio_pci_device_test"], "mock": True}


def test_scenarios_still_expand_beside_the_section() -> None:
    variants = expand(
        {"name": "k", "scenarios": ["smoke"], "viommus": {"vtd": {}},
         KSELFTEST: {"arches": ["x86_64"], "configs": ["vtd-legacy"]}},
        REGISTRY,
    ).variants  # fmt: skip
    assert [v.scenario for v in variants] == ["smoke", KSELFTEST]


@pytest.mark.parametrize(
    ("section", "extra", "message"),
    [
        ({"suites": "all"}, {}, "matrix.kselftest.suites: unknown key"),
        ({"suite": "net"}, {}, "--suite net: expected iommu, vfio or all"),
        ({"tests": ["nope"]}, {}, "no binary 'nope'"),
        ({"tests": "iommufd"}, {}, "matrix.kselftest.tests: expected a list"),
        ({"arches": ["riscv64"]}, {}, "matrix.kselftest.arches: expected a list"),
        ({"configs": ["vtd-fast"]}, {}, "unknown configuration 'vtd-fast'"),
        ({"arches": ["arm64"], "configs": ["vtd-legacy"]}, {}, "unknown configuration"),
        ({"timeout": "later"}, {}, "matrix.kselftest.timeout: 'later' is not a number"),
        ({}, {"kernels": {"k": {"kernel": "/b", "initrd": "/i"}}}, "not an initrd"),
    ],
)
def test_invalid_section_names_the_key(
    section: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _expand(section, **extra)
    assert message in str(info.value)


def _config_run(tap: str, where: Any) -> ConfigRun:
    run = BinaryRun("iommu", "iommufd", where, report=parse(tap), status=1, wall_s=2.0)
    _judge_all(run, EXPECTED)
    return ConfigRun(where, Path("/nonexistent"), runs=[run])


def test_run_cell_judges_the_results_and_publishes_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The avocado test of a selftest cell: the real judging and summaries, no guest."""
    from harness.images import choice
    from harness.kselftest import build, runner

    (variant,) = _expand({"suite": "iommu", "arches": ["x86_64"], "configs": ["vtd-legacy"]})
    calls: list[dict[str, Any]] = []

    def run_matrix(chosen: Any, build: Any, selection: Any, *args: Any, **kw: Any) -> Any:
        calls.append({"chosen": chosen, "selection": selection, **kw})
        return [_config_run(TAP + "not ok 4 iommufd.new_failure\n", chosen[0])]

    image = type("Image", (), {"kernel_identity": {"source": "package"}, "kernel_release": "7.3"})
    monkeypatch.setattr(runner, "run_matrix", run_matrix)
    monkeypatch.setattr(
        build, "ensure_selftests", lambda arch: type("B", (), {"arch": arch, "root": tmp_path})
    )
    monkeypatch.setattr(choice.KernelChoice, "image", lambda self, arch, flavor="default": image)
    monkeypatch.setattr(avocado_test, "identities", lambda v: {"qemu_version": "10.0.2"})
    monkeypatch.setattr("harness.kselftest.expected.load", lambda path: EXPECTED)
    test = FakeAvocadoTest(variant, tmp_path)
    with pytest.raises(FakeAvocadoTest.FailedError, match=r"iommufd\.new_failure"):
        avocado_test.run_variant(test)
    (call,) = calls
    assert [c.label for c in call["chosen"]] == ["vtd-legacy"] and call["with_mock"] is True
    assert list(call["selection"].binaries) == ["iommu"]
    info = json.loads(test.whiteboard)
    assert info["status"] == "failed"
    # an unlisted skip fails like an unlisted failure; the listed failure does not
    assert info["failed_checks"] == [
        "x86_64/vtd-legacy iommufd iommufd.no_viommu.alloc",
        "x86_64/vtd-legacy iommufd iommufd.new_failure",
    ]
    (summary,) = info["kselftest"]
    assert summary["counts"]["pass"] == 1 and summary["counts"]["expected"] == 1
    assert summary["counts"]["unexpected"] == 2
    assert [item[:3] for item in summary["not_passed"]] == [
        ["iommufd_ioas.mock_domain.dmabuf_simple", "fail", "expected"],
        ["iommufd.no_viommu.alloc", "skip", "unexpected"],
        ["iommufd.new_failure", "fail", "unexpected"],
    ]
    artifacts = tmp_path / avocado_test.ARTIFACTS
    assert "iommufd.new_failure" in (artifacts / "junit.xml").read_text()
    assert json.loads((artifacts / "results.json").read_text())["arch"] == "x86_64"

    # the report: the row carries the summaries, the text and HTML show the table
    _results(
        tmp_path, [{"name": f"t;{variant.id}", "status": "FAIL", "whiteboard": test.whiteboard}]
    )
    (row,) = report.collect(tmp_path, [variant])
    assert row.kselftest == info["kselftest"]
    text = report.text_table([row])
    assert "x86_64.vtd-legacy" in text
    table_line = next(line for line in text.splitlines() if line.startswith("iommufd "))
    assert "1/2/1 (1 expected) 2 UNEXPECTED" in table_line
    assert "x86_64.vtd-legacy iommufd.new_failure: fail (unexpected)" in text
    _, html_path = report.write_report(tmp_path, "k", "", [row])
    page = html_path.read_text()
    assert "<h2>Kernel selftests</h2>" in page and "iommufd.no_viommu.alloc" in page


def test_table_puts_binaries_in_rows_and_cells_in_columns() -> None:
    def cell(cid: str, binaries: dict[str, int]) -> Any:
        summaries = [
            {"binary": b, "counts": {"pass": n, "fail": 0, "skip": 0}, "not_passed": []}
            for b, n in binaries.items()
        ]
        return type("Cell", (), {"id": cid, "kselftest": summaries})

    text = selftests.text_table(
        [cell("kselftest.x86_64.a", {"iommufd": 233, "vfio_x": 5}), cell("kselftest.arm64.b",
                                                                         {"vfio_x": 6})]
    )  # fmt: skip
    lines = text.splitlines()
    assert lines[1].split() == ["binary", "x86_64.a", "arm64.b"]
    assert lines[2].split() == ["iommufd", "233/0/0", "-"]
    assert lines[3].split() == ["vfio_x", "5/0/0", "6/0/0"]
