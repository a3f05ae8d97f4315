"""The QEMU columns of a qualification report: every difference, from synthetic results.

Rows come from a hand-written avocado ``results.json`` (what the job writes), so the
report's whole path is exercised: collect -> compare -> JSON / HTML / text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.qualify import compare, report
from harness.qualify.matrix import Variant, expand, load_matrix

pytestmark = pytest.mark.tier0

RELEASE = Path(__file__).resolve().parents[1] / "qualification" / "release.yaml"


def _variant(scenario: str, qemu: str, arch: str = "x86_64") -> Variant:
    viommu = "vtd" if arch == "x86_64" else "smmuv3"
    return Variant(
        id=f"{scenario}.{arch}.{viommu}-default.qemu-{qemu}", scenario=scenario, arch=arch,
        viommu=viommu, options_label="default", viommu_options={}, qemu_label=qemu, qemu=qemu,
        kernel_label="default", kernel={"flavor": "default"},
    )  # fmt: skip


def _test(variant: Variant, avocado_status: str, **info: Any) -> dict[str, Any]:
    return {
        "name": f"w.py:ScenarioVariant.test;{variant.id}",
        "status": avocado_status,
        "whiteboard": json.dumps(info),
        "fail_reason": info.get("reason", ""),
    }


CHECKS_10 = [["dma", True, "'A'"], ["fault recorded", True, "1"], ["health", True, "[]"]]


def _results(tmp_path: Path) -> list[Variant]:
    """Four cells: same, a row flips, an error on 11 only, a skip on 11 only; rows differ."""
    same = [_variant("same", "10"), _variant("same", "11")]
    flips = [_variant("flips", "10"), _variant("flips", "11")]
    errors = [_variant("errors", "10", "arm64"), _variant("errors", "11", "arm64")]
    skips = [_variant("skips", "10"), _variant("skips", "11")]
    rows = [_variant("rows", "10"), _variant("rows", "11")]
    v10 = {"qemu_version": "10.0.2 (Debian)"}
    v11 = {"qemu_version": "11.1.3 (Debian)"}
    flipped = [["dma", True, "'A'"], ["fault recorded", False, "0"], ["health", True, "[]"]]
    tests = [
        _test(same[0], "PASS", status="passed", check_results=CHECKS_10, **v10),
        _test(same[1], "PASS", status="passed", check_results=CHECKS_10, **v11),
        _test(flips[0], "PASS", status="passed", check_results=CHECKS_10, **v10),
        _test(flips[1], "FAIL", status="failed", reason="flips: FAIL", check_results=flipped,
              **v11),
        _test(errors[0], "PASS", status="passed", check_results=CHECKS_10, **v10),
        _test(errors[1], "ERROR", status="error", reason="MachineError: QEMU exited", **v11),
        _test(skips[0], "PASS", status="passed", check_results=CHECKS_10, **v10),
        _test(skips[1], "CANCEL", status="skipped",
              reason="QEMU 11.1.3 lacks property intel-iommu.x-pasid-mode", **v11),
        _test(rows[0], "PASS", status="passed", check_results=CHECKS_10, **v10),
        _test(rows[1], "PASS", status="passed", check_results=[*CHECKS_10, ["ssid", True, "2"]],
              **v11),
    ]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"tests": tests}))
    return [*same, *flips, *errors, *skips, *rows]


def _caps(version: list[int], vtd: list[str], devices: list[str], event: str) -> dict[str, Any]:
    return {
        "binary": "/q", "version": version, "package": "Debian", "devices": devices,
        "properties": {"intel-iommu": vtd, "edu": ["dma_mask"]}, "accelerators": ["tcg"],
        "trace_events": ["vtd_dmar_fault", event],
    }  # fmt: skip


CAPABILITIES = {
    "10": {
        "x86_64": _caps(
            [10, 0, 2], ["x-flts", "x-scalable-mode", "pt"], ["edu", "old-dev"],
            "smmuv3_record_event",
        )
    },
    "11": {
        "x86_64": _caps(
            [11, 1, 3], ["fsts", "scalable-mode", "svm"], ["edu", "new-dev"],
            "smmuv3_propagate_event",
        )
    },
}  # fmt: skip


def test_every_kind_of_difference_is_named(tmp_path: Path) -> None:
    rows = report.collect(tmp_path, _results(tmp_path))
    found = compare.compare(rows, CAPABILITIES)
    assert found.labels == ["10", "11"]
    by_cell = {c.scenario: [(d.kind, d.text) for d in c.differences] for c in found.cells}
    assert by_cell["same"] == []
    assert by_cell["flips"] == [
        ("status", "passed on 10, failed on 11 (flips: FAIL)"),
        ("check", "'fault recorded' passes on 10, fails on 11 (failing side got 0)"),
    ]
    assert by_cell["errors"] == [("error", "errors on 11 only: MachineError: QEMU exited")]
    assert by_cell["skips"] == [
        ("skip", "is skipped on 11 only: QEMU 11.1.3 lacks property intel-iommu.x-pasid-mode")
    ]
    assert by_cell["rows"] == [("rows", "'ssid' only on 11 (passes)")]
    capability = [d.text for d in found.capability_differences]
    assert capability == [
        "intel-iommu: renamed x-scalable-mode -> scalable-mode, x-flts -> fsts (same meaning;"
        " the harness uses whichever the QEMU has)",
        "intel-iommu: properties only in 10: pt",
        "intel-iommu: properties only in 11: svm",
        "1 device types only in 10: old-dev",
        "1 device types only in 11: new-dev",
        "1 trace events only in 10: smmuv3_record_event",
        "1 trace events only in 11: smmuv3_propagate_event",
    ]
    assert found.versions == {
        "10": {"x86_64": "10.0.2 (Debian)"},
        "11": {"x86_64": "11.1.3 (Debian)"},
    }


def test_one_qemu_has_no_comparison(tmp_path: Path) -> None:
    variants = [v for v in _results(tmp_path) if v.qemu_label == "10"]
    rows = report.collect(tmp_path, variants)
    assert report.qemu_comparison(rows, CAPABILITIES) is None
    assert "QEMU differences" not in report.text_table(rows)


def test_duplicate_row_names_are_compared_in_order() -> None:
    cell = compare.Cell("s", "x86_64", "vtd", "default", "default")
    a = compare.Run("10", "passed", checks=(("dma", True, ""), ("dma", True, "")))
    b = compare.Run("11", "failed", checks=(("dma", True, ""), ("dma", False, "'B'")))
    texts = [d.text for d in compare.compare_runs(cell, a, b)]
    assert "'dma (2)' passes on 10, fails on 11 (failing side got 'B')" in texts


def test_report_shows_the_columns_and_writes_the_list(tmp_path: Path) -> None:
    variants = _results(tmp_path)
    (tmp_path / report.CAPABILITIES_JSON).write_text(json.dumps(CAPABILITIES))
    rows = report.collect(tmp_path, variants)
    assert [r.error for r in rows].count(True) == 1
    json_path, html_path = report.write_report(tmp_path, "release", "", rows)
    data = json.loads(json_path.read_text())["qemu_comparison"]
    kinds = sorted({d["kind"] for d in data["differences"]})
    assert kinds == ["capability", "check", "error", "rows", "skip", "status"]
    flips = next(c for c in data["cells"] if c["scenario"] == "flips")
    assert flips["runs"]["11"]["failed_checks"] == ["fault recorded"]
    page = html_path.read_text()
    assert "<h2>QEMU 10 vs 11</h2>" in page and "errors on 11 only" in page
    text = (tmp_path / report.DIFFERENCES_TEXT).read_text()
    assert "[check] flips x86_64 vtd-default: 'fault recorded' passes on 10" in text
    assert "11: x86_64 11.1.3 (Debian)" in text
    assert "[capability] x86_64 QEMU 10 vs 11: intel-iommu: renamed" in report.text_table(
        rows, report.load_capabilities(tmp_path)
    )


def test_rows_fall_back_to_the_artifacts_verdict(tmp_path: Path) -> None:
    """Results written before the whiteboard carried rows: verdict.json beside the artifacts."""
    variant = _variant("old", "10")
    artifacts = tmp_path / "a"
    artifacts.mkdir()
    verdict = {"checks": [{"name": "dma", "ok": False, "got": "B", "expected": "A"}]}
    (artifacts / "verdict.json").write_text(json.dumps(verdict))
    test = _test(variant, "FAIL", status="failed", artifacts=str(artifacts))
    (tmp_path / "results.json").write_text(json.dumps({"tests": [test]}))
    (row,) = report.collect(tmp_path, [variant])
    assert row.check_results == [["dma", False, "'B'"]]


def test_rows_naming_a_renamed_property_are_one_row() -> None:
    cell = compare.Cell("vtd-capabilities", "x86_64", "vtd", "default", "default")
    a = compare.Run("10", "passed", checks=(("QMP x-flts", True, "True"),))
    b = compare.Run("11", "failed", checks=(("QMP fsts", False, "False"),))
    texts = [d.text for d in compare.compare_runs(cell, a, b)]
    assert texts[1:] == ["'QMP fsts' passes on 10, fails on 11 (failing side got False)"]
    same = compare.Run("11", "passed", checks=(("QMP fsts", True, "True"),))
    assert compare.compare_runs(cell, a, same) == []


def test_unprobed_qemu_is_reported_not_compared() -> None:
    caps = {"10": CAPABILITIES["10"], "11": {"x86_64": "ConfigError: no tree"}}
    (only,) = compare.compare_capabilities(caps)
    assert only.text == "not compared: ConfigError: no tree"


def test_release_matrix_is_every_tier2_scenario_on_both_qemus() -> None:
    from harness.scenarios.base import load_all

    registry = load_all()
    matrix = load_matrix(RELEASE, registry)
    tier2 = {  # the scenarios of harness.scenarios (a fuzz replay is not one to qualify)
        n for n, s in registry.items()
        if s.tier == 2 and s.run.__module__.startswith("harness.scenarios.")
    }  # fmt: skip
    assert {v.scenario for v in matrix.variants} == tier2
    assert {v.qemu for v in matrix.variants} == {"10", "11"}
    cells = {(v.scenario, v.arch) for v in matrix.variants}
    assert cells == {(n, a) for n in tier2 for a in registry[n].arches}
    assert len(matrix.variants) == 2 * len(cells)


def test_matrix_qemu_entries_name_releases() -> None:
    from harness.scenarios.base import load_all

    data = {
        "scenarios": ["smoke-vfio-edu"],
        "qemu": {"ten": "10", "eleven": 11, "bin": "/opt/qemu/bin"},
        "viommus": {"vtd": {"options": {"default": {}}}},
    }
    qemus = {v.qemu_label: v.qemu for v in expand(data, load_all()).variants}
    assert qemus == {"ten": "10", "eleven": "11", "bin": "/opt/qemu/bin/qemu-system-x86_64"}
