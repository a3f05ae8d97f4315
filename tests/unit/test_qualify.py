"""Qualification: matrix expansion and validation, the avocado test body, the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.cli import main
from harness.errors import ConfigError
from harness.qualify import avocado_test, job, report
from harness.qualify.matrix import Variant, expand, load_matrix
from harness.scenarios.base import Check, GuestSpec, Scenario, Verdict

pytestmark = pytest.mark.tier0

CI_MATRIX = Path(__file__).resolve().parents[1] / "qualification" / "ci.yaml"
VIOMMU = {"x86_64": "vtd", "arm64": "smmuv3"}


def _scenario(name: str, arches: tuple[str, ...], viommu: Any = None, tier: int = 2) -> Scenario:
    def run(guest: Any, params: Any) -> Verdict:
        return Verdict(name)

    run.__module__ = "harness.scenarios.fake"
    return Scenario(
        name=name,
        tier=tier,
        arches=arches,
        guest=lambda arch: GuestSpec(viommu=viommu if viommu != "per-arch" else VIOMMU[arch]),
        run=run,
        description=name,
    )


REGISTRY = {
    "smoke": _scenario("smoke", ("x86_64", "arm64"), "per-arch"),
    "mock": _scenario("mock", ("x86_64", "arm64"), None, tier=1),
    "selfcheck": _scenario("selfcheck", ("x86_64",), None, tier=0),
}


def _matrix(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "scenarios": ["smoke"],
        "viommus": {
            "vtd": {"options": {"flts": {"scalable_mode": True, "flts": True}, "plain": {}}},
            "smmuv3": {"options": {"nested": {"stage": "nested"}}},
        },
    }
    data.update(extra)
    return data


def test_ci_matrix_has_two_variants_per_viommu() -> None:
    matrix = load_matrix(CI_MATRIX)
    assert [v.id for v in matrix.variants] == [
        "smoke-vfio-edu.x86_64.vtd-scalable-flts",
        "smoke-vfio-edu.x86_64.vtd-scalable",
        "smoke-vfio-edu.arm64.smmuv3-nested",
        "smoke-vfio-edu.arm64.smmuv3-stage1",
    ]
    assert matrix.variants[1].viommu_options == {"scalable_mode": True, "flts": False}
    assert matrix.variants[3].viommu_options == {"stage": "1"}
    assert {v.qemu for v in matrix.variants} == {None}


def test_expansion_keeps_what_each_scenario_supports() -> None:
    matrix = expand(_matrix(), REGISTRY)
    assert [(v.arch, v.viommu, v.options_label) for v in matrix.variants] == [
        ("x86_64", "vtd", "flts"),
        ("x86_64", "vtd", "plain"),
        ("arm64", "smmuv3", "nested"),
    ]
    assert all(v.seed is None and v.accel == "auto" for v in matrix.variants)


def test_product_over_qemu_and_kernels_with_exclusions() -> None:
    data = _matrix(
        qemu={"deb": None, "new": "/opt/qemu/bin", "x86": {"x86_64": "/q/x86"}},
        kernels={"default": None, "custom": {"kernel": "/k/bzImage", "initrd": "/k/initrd"}},
        exclude=[{"qemu": "new", "kernel": "custom"}, {"arch": "arm64", "qemu": "x86"}],
        seed=99,
        params={"rounds": 2},
        accel="tcg",
        timeout=60,
    )
    variants = expand(data, REGISTRY).variants
    assert len(variants) == 3 * 3 * 2 - 3 - 2
    ids = {v.id for v in variants}
    assert "smoke.x86_64.vtd-flts.qemu-new.kernel-default" in ids
    assert "smoke.x86_64.vtd-flts.qemu-new.kernel-custom" not in ids
    new = next(v for v in variants if v.id == "smoke.arm64.smmuv3-nested.qemu-new.kernel-default")
    assert new.qemu == "/opt/qemu/bin/qemu-system-aarch64"
    custom = next(v for v in variants if v.id == "smoke.x86_64.vtd-plain.qemu-x86.kernel-custom")
    kwargs = custom.run_kwargs()
    assert kwargs["qemu"] == "/q/x86"
    assert kwargs["kernel"] == Path("/k/bzImage") and kwargs["initrd"] == Path("/k/initrd")
    assert kwargs["seed"] == 99 and kwargs["params"] == {"rounds": 2}
    assert kwargs["accel"] == "tcg" and kwargs["viommu_options"] == {}
    assert custom.timeout == 60.0


def test_default_scenarios_are_registered_tier1_and_up() -> None:
    data = _matrix(viommus={"none": {}})
    del data["scenarios"]
    variants = expand(data, REGISTRY).variants
    assert [(v.scenario, v.arch, v.options_label) for v in variants] == [
        ("mock", "x86_64", "default"),
        ("mock", "arm64", "default"),
    ]


def test_variant_json_round_trip() -> None:
    variant = expand(_matrix(), REGISTRY).variants[0]
    assert Variant.from_json(json.loads(json.dumps(variant.to_json()))) == variant
    with pytest.raises(ConfigError, match="variant:"):
        Variant.from_json({"id": "x"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "matrix.colour: unknown key"),
        ({"accel": "hvf"}, "matrix.accel: 'hvf' is not auto"),
        ({"timeout": "soon"}, "matrix.timeout: 'soon' is not a number"),
        ({"seed": "x"}, "matrix.seed: 'x' is not an integer"),
        ({"scenarios": ["nope"]}, "unknown scenario 'nope' (known: mock, selfcheck, smoke)"),
        ({"viommus": {"amd": {}}}, "matrix.viommus.amd: unknown vIOMMU model"),
        ({"viommus": {"vtd": {"arches": ["arm64"]}}}, "matrix.viommus.vtd.arches: vtd has no"),
        ({"viommus": {"vtd": {"options": {"x": {"fltz": 1}}}}}, "options.x: vtd option 'fltz'"),
        ({"viommus": {"vtd": {"opts": {}}}}, "matrix.viommus.vtd.opts: unknown key"),
        ({"viommus": {"none": {"options": {"x": {"a": 1}}}}}, "options.x: vIOMMU options given"),
        ({"viommus": {}}, "matrix.viommus: at least one"),
        ({"exclude": [{"flavour": "x"}]}, "matrix.exclude[0].flavour: unknown key"),
        ({"kernels": {"k": {"initrd": "/i"}}}, "matrix.kernels.k: initrd given without kernel"),
        ({"kernels": {"k": "bzImage"}}, "matrix.kernels.k: expected null"),
        ({"qemu": {"q": {"riscv64": "/q"}}}, "matrix.qemu.q: unknown arch 'riscv64'"),
        ({"exclude": [{"scenario": "smoke"}]}, "expands to no variant"),
    ],
)
def test_invalid_matrix_names_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        expand(_matrix(**change), REGISTRY)
    assert message in str(info.value)


def test_load_matrix_errors(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    bad = tmp_path / "m.yaml"
    bad.write_text("viommus: [\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: not valid YAML"):
        load_matrix(bad, REGISTRY)
    with pytest.raises(ConfigError, match="no such matrix file"):
        load_matrix(tmp_path / "none.yaml", REGISTRY)
    bad.write_text("viommus: {vtd: {}}\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: matrix\.bogus: unknown key"):
        load_matrix(bad, REGISTRY)


def test_cli_lists_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qualify", "--matrix", str(CI_MATRIX), "--list", "--json", "--only", "arm64"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in listed] == [
        "smoke-vfio-edu.arm64.smmuv3-nested",
        "smoke-vfio-edu.arm64.smmuv3-stage1",
    ]
    assert main(["qualify", "--matrix", str(CI_MATRIX), "--list", "--only", "riscv"]) == 1
    assert "matches no variant" in capsys.readouterr().err


def test_job_config_uses_dict_variants() -> None:
    variants = expand(_matrix(), REGISTRY).variants
    config = job.job_config(variants, Path("/r"), parallel=2)
    (reference,) = config["resolver.references"]
    assert reference.endswith("tests/qualification/avocado_scenarios.py:ScenarioVariant.test")
    assert Path(reference.partition(":")[0]).is_file()
    rows = config["run.dict_variants"]
    assert [r["id"] for r in rows] == [v.id for v in variants]
    assert all(set(r) == {"id", "timeout", "variant"} for r in rows)
    assert Variant.from_json(json.loads(rows[0]["variant"])) == variants[0]
    assert config["run.max_parallel_tasks"] == 2
    assert config["run.dict_variants.variant_id_keys"] == ["id"]


class FakeAvocadoTest:
    """The parts of ``avocado.Test`` that ``run_variant`` uses."""

    class CancelledError(Exception):
        pass

    class FailedError(Exception):
        pass

    def __init__(self, variant: Variant, logdir: Path) -> None:
        self.params = {"variant": json.dumps(variant.to_json())}
        self.logdir = str(logdir)
        self.whiteboard = ""
        self.log = SimpleNamespace(info=lambda *a: None)

    def cancel(self, reason: str) -> None:
        raise self.CancelledError(reason)

    def fail(self, reason: str) -> None:
        raise self.FailedError(reason)


@pytest.fixture
def variant() -> Variant:
    return expand(_matrix(), REGISTRY).variants[0]


def _fake_run(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> list[dict[str, Any]]:
    from harness.scenarios import runner

    calls: list[dict[str, Any]] = []

    def run_scenario(**kwargs: Any) -> Verdict:
        calls.append(kwargs)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(runner, "run_scenario", run_scenario)
    monkeypatch.setattr(avocado_test, "identities", lambda v: {"qemu_version": "10.0.2"})
    return calls


def test_run_variant_passes_overrides_and_publishes(
    variant: Variant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = Verdict("smoke", [Check.equal("ok", 1, 1)], {"kernel_release": "7.3.4", "seed": 3})
    calls = _fake_run(monkeypatch, verdict)
    test = FakeAvocadoTest(variant, tmp_path)
    avocado_test.run_variant(test)
    (call,) = calls
    assert call["artifacts"] == tmp_path / "artifacts"
    assert call["viommu_options"] == {"scalable_mode": True, "flts": True}
    info = json.loads(test.whiteboard)
    assert info["status"] == "passed"
    assert info["qemu_version"] == "10.0.2" and info["kernel_release"] == "7.3.4"
    assert info["seed"] == 3
    assert json.loads((tmp_path / "variant.json").read_text()) == info


def test_run_variant_fails_with_the_summary(
    variant: Variant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = Verdict("smoke", [Check.equal("driver", "vfio-pci", "none")])
    _fake_run(monkeypatch, verdict)
    test = FakeAvocadoTest(variant, tmp_path)
    with pytest.raises(FakeAvocadoTest.FailedError, match="driver: expected 'vfio-pci'"):
        avocado_test.run_variant(test)
    info = json.loads(test.whiteboard)
    assert info["status"] == "failed" and info["failed_checks"] == ["driver"]
    assert "driver" in (tmp_path / "verdict.txt").read_text()


def test_run_variant_cancels_on_a_missing_capability(
    variant: Variant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.qemu.probe import MissingCapabilityError

    _fake_run(monkeypatch, MissingCapabilityError("QEMU 9.0.0 lacks property intel-iommu.x-flts"))
    test = FakeAvocadoTest(variant, tmp_path)
    with pytest.raises(FakeAvocadoTest.CancelledError, match=r"lacks property intel-iommu\.x-flts"):
        avocado_test.run_variant(test)
    assert json.loads(test.whiteboard)["status"] == "skipped"


def _results(logdir: Path, tests: list[dict[str, Any]]) -> None:
    (logdir / "results.json").write_text(json.dumps({"tests": tests}))


def test_report_rows_links_and_html(tmp_path: Path) -> None:
    variants = expand(_matrix(), REGISTRY).variants
    test_dir = tmp_path / "test-results" / "1-x"
    (test_dir / "artifacts").mkdir(parents=True)
    (test_dir / "debug.log").write_text("")
    (test_dir / "artifacts" / "repro.json").write_text("{}")
    info = {
        "status": "failed",
        "reason": "smoke: FAIL (3 checks, 1 failed)",
        "qemu_version": "10.0.2 (Debian)",
        "kernel_release": "7.3.4-viommu-harness",
        "seed": 5,
        "artifacts": str(test_dir / "artifacts"),
        "repro_bundle": str(test_dir / "artifacts" / "repro.json"),
    }
    _results(
        tmp_path,
        [
            {"name": f"w.py:ScenarioVariant.test;{variants[0].id}", "status": "PASS",
             "logdir": str(test_dir), "whiteboard": json.dumps({**info, "status": "passed"}),
             "time_elapsed": 12.5},
            {"name": f"w.py:ScenarioVariant.test;{variants[1].id}", "status": "FAIL",
             "logdir": str(test_dir), "whiteboard": json.dumps(info), "fail_reason": "x"},
        ],
    )  # fmt: skip
    rows = report.collect(tmp_path, variants)
    assert [r.status for r in rows] == ["passed", "failed", "failed"]
    assert rows[0].reason == "" and rows[0].seconds == 12.5
    assert rows[1].reason == "smoke: FAIL (3 checks, 1 failed)"
    assert rows[1].artifacts == "test-results/1-x/artifacts"
    assert rows[1].repro_bundle == "test-results/1-x/artifacts/repro.json"
    assert rows[1].qemu_version == "10.0.2 (Debian)"
    assert rows[2].avocado_status == "NOT RUN"
    json_path, html_path = report.write_report(tmp_path, "t", "", rows, 40.0)
    page = html_path.read_text()
    assert 'href="test-results/1-x/artifacts/repro.json"' in page
    assert "1 passed, 2 failed, 0 skipped" in page
    assert json.loads(json_path.read_text())["totals"] == {"passed": 1, "failed": 2, "skipped": 0}
    assert variants[1].id in report.text_table(rows)


def test_report_skip_reason_from_cancel(tmp_path: Path) -> None:
    variants = expand(_matrix(), REGISTRY).variants[:1]
    reason = "QEMU 9.0.0 lacks property intel-iommu.x-flts"
    test = {
        "name": f"t;{variants[0].id}",
        "status": "CANCEL",
        "whiteboard": "",
        "fail_reason": reason,
    }
    _results(tmp_path, [test])
    (row,) = report.collect(tmp_path, variants)
    assert row.status == "skipped"
    assert row.reason == reason


def test_avocado_job_runs_variants_and_writes_both_reports(tmp_path: Path) -> None:
    """The whole avocado path, no guest: a QEMU that does not exist fails each variant."""
    pytest.importorskip("avocado")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(
        "name: plumbing\nscenarios: [smoke-vfio-edu]\nqemu: {gone: /nonexistent/bin}\n"
        "viommus:\n  vtd: {options: {flts: {flts: true}}}\n"
        "  smmuv3: {options: {s1: {stage: '1'}}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "qualify", "--matrix", str(matrix),
         "--results", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "qualification plumbing: 0 passed, 2 failed, 0 skipped" in proc.stdout
    (logdir,) = (tmp_path / "results").glob("job-*")
    for name in ("results.html", "results.xml", "results.json", "qualification.html"):
        assert (logdir / name).is_file(), name
    data = json.loads((logdir / "qualification.json").read_text())
    assert [v["id"] for v in data["variants"]] == [
        "smoke-vfio-edu.x86_64.vtd-flts",
        "smoke-vfio-edu.arm64.smmuv3-s1",
    ]
    reasons = [v["reason"] for v in data["variants"]]
    assert all("/nonexistent/bin/qemu-system-" in r and "not found" in r for r in reasons)
    assert all(v["avocado_status"] == "ERROR" for v in data["variants"])
