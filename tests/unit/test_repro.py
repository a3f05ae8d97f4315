"""Repro bundles: writing, reading, validation, the runner's seed and bundle conventions."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import replay, repro
from harness.cli import main
from harness.profiles import make_devices, make_viommu
from harness.qemu.description import Machine
from harness.scenarios import base, runner
from harness.scenarios.base import Check, GuestSpec, Scenario, Verdict

pytestmark = pytest.mark.tier0

SCENARIO = "unit-repro-fake"


def _run(guest: Any, params: Any) -> Verdict:
    verdict = Verdict(SCENARIO)
    verdict.add(Check.equal("always ok", 1, 1))
    verdict.add(Check.equal("fails on request", False, bool(params.get("fail"))))
    return verdict


@pytest.fixture
def scenario(monkeypatch: pytest.MonkeyPatch) -> Scenario:
    fake = Scenario(
        name=SCENARIO,
        tier=1,
        arches=("x86_64",),
        guest=lambda arch: GuestSpec(viommu="vtd", viommu_options={"flts": True}),
        run=_run,
        description="fake",
        defaults={"fail": False},
    )
    base.load_all()
    monkeypatch.setitem(base.REGISTRY, SCENARIO, fake)
    return fake


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, data in (("kernel", b"bzImage"), ("initrd", b"cpio"), ("qemu", b"\x7fELF")):
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = path
    return out


@pytest.fixture
def prepared(files: dict[str, Path]) -> runner.Prepared:
    machine = Machine(
        arch="x86_64",
        kernel=files["kernel"],
        initrd=files["initrd"],
        viommu=make_viommu("vtd", {"flts": False}),
        devices=make_devices(["edu"]),
    )
    return runner.Prepared(
        machine=machine,
        binary=str(files["qemu"]),
        ready_marker="READY",
        image={"key": "abc123", "arch": "x86_64", "flavor": "default", "kernel_release": "7.3"},
        viommu_options={"flts": False},
    )


@pytest.fixture
def failed(scenario: Scenario) -> Verdict:
    return _run(None, {"fail": True})


@pytest.fixture
def bundle_path(
    tmp_path: Path, scenario: Scenario, prepared: runner.Prepared, failed: Verdict
) -> Path:
    params = {"fail": True, "seed": 77}
    data = repro.scenario_bundle(scenario, params, prepared, None, tmp_path, verdict=failed)
    return repro.write_bundle(data, tmp_path / "out")


def _edit(path: Path, change: Any) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_bundle_round_trip(bundle_path: Path, prepared: runner.Prepared, files: dict) -> None:
    bundle = repro.read_bundle(bundle_path)
    assert bundle.kind == "scenario"
    assert bundle.seed == 77
    assert bundle.failed_checks == ["fails on request"]
    assert bundle.scenario["name"] == SCENARIO
    assert bundle.scenario["module"] == __name__
    assert bundle.scenario["params"] == {"fail": True, "seed": 77}
    assert bundle.scenario["viommu_options"] == {"flts": False}
    (guest,) = bundle.guests
    assert guest.machine == prepared.machine
    assert guest.ready_marker == "READY"
    assert guest.image["key"] == "abc123"
    assert guest.kernel["release"] == "7.3"
    assert guest.qemu["sha256"] == hashlib.sha256(files["qemu"].read_bytes()).hexdigest()
    assert guest.initrd["sha256"] == hashlib.sha256(b"cpio").hexdigest()


def test_read_bundle_accepts_its_directory(bundle_path: Path) -> None:
    assert repro.read_bundle(bundle_path.parent).path == bundle_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("guests"), "missing key 'guests'"),
        (lambda d: d["guests"][0].pop("machine"), "missing key guests[0].'machine'"),
        (lambda d: d["scenario"].pop("params"), "missing key scenario.'params'"),
        (lambda d: d.update(format="other/9"), "unsupported format 'other/9'"),
        (lambda d: d.update(kind="movie"), "'kind': 'movie' is not one of"),
        (lambda d: d.update(seed="x"), "'seed': expected an integer"),
        (lambda d: d.update(guests=[]), "'guests': empty"),
        (lambda d: d["guests"][0]["machine"].update(memory_mb=1), "memory_mb=1"),
        (lambda d: d["guests"][0]["machine"].update(colour=1), "machine.colour: unknown field"),
        (lambda d: d["guests"][0]["qemu"].update(path=3), "guests[0].qemu.'path': expected str"),
    ],
)
def test_invalid_bundle_names_the_problem(bundle_path: Path, change: Any, message: str) -> None:
    _edit(bundle_path, change)
    with pytest.raises(repro.BundleError) as info:
        repro.read_bundle(bundle_path)
    assert message in str(info.value)
    assert str(bundle_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "repro.json"
    bad.write_text('{"format": ')
    with pytest.raises(repro.BundleError, match="not valid JSON"):
        repro.read_bundle(bad)
    with pytest.raises(repro.BundleError, match="no such file"):
        repro.read_bundle(tmp_path / "nothing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(repro.BundleError, match="expected a JSON object, got list"):
        repro.read_bundle(bad)


def test_resolve_scenario(bundle_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = repro.read_bundle(bundle_path)
    assert repro.resolve_scenario(bundle).name == SCENARIO
    _edit(bundle_path, lambda d: d["scenario"].update(name="no-such", module=""))
    with pytest.raises(repro.BundleError, match="unknown scenario 'no-such' \\(known: "):
        repro.resolve_scenario(repro.read_bundle(bundle_path))
    _edit(bundle_path, lambda d: d["scenario"].update(module="no_such_module_xyz"))
    with pytest.raises(repro.BundleError, match="'no_such_module_xyz' does not import"):
        repro.resolve_scenario(repro.read_bundle(bundle_path))


def test_resolve_scenario_imports_the_recorded_module(
    bundle_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "unit_repro_outside_scenarios"
    (tmp_path / f"{module}.py").write_text(
        "from harness.scenarios.base import GuestSpec, Verdict, scenario\n"
        "@scenario('unit-repro-outside', tier=1, arches=('x86_64',), guest=GuestSpec(None))\n"
        "def run(guest, params):\n"
        "    return Verdict('unit-repro-outside')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    _edit(bundle_path, lambda d: d["scenario"].update(name="unit-repro-outside", module=module))
    try:
        found = repro.resolve_scenario(repro.read_bundle(bundle_path))
        assert found.run.__module__ == module
    finally:
        base.REGISTRY.pop("unit-repro-outside", None)
        sys.modules.pop(module, None)


def test_check_files(bundle_path: Path, files: dict[str, Path]) -> None:
    bundle = repro.read_bundle(bundle_path)
    assert repro.check_files(bundle) == []
    files["qemu"].write_bytes(b"\x7fELF rebuilt")
    (warning,) = repro.check_files(bundle)
    assert "guests[0].qemu" in warning and "changed since the failed run" in warning
    with pytest.raises(repro.BundleError, match=r"qemu .* changed"):
        repro.check_files(bundle, strict=True)
    assert repro.check_files(bundle, qemu="/other/qemu", strict=True) == []
    files["kernel"].unlink()
    with pytest.raises(repro.BundleError, match=r"guests\[0\]\.kernel .* no longer exists"):
        repro.check_files(bundle)


def test_cli_reports_a_corrupt_bundle_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "repro.json"
    bad.write_text("{}")
    assert main(["repro", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"harness repro: error: {bad}: missing key 'format'\n"


def test_cli_strict_refuses_a_changed_binary(
    bundle_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files["qemu"].write_bytes(b"changed")
    assert main(["repro", "--strict", str(bundle_path)]) == 2
    assert "changed since the failed run" in capsys.readouterr().err


class FakeVm:
    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.accel = "tcg"
        self.name = "fake"


class FakeGuest:
    """Stands in for ``harness.guest.Guest``: records what it was asked to boot."""

    booted: list[FakeGuest] = []

    def __init__(self, machine: Machine, artifacts: Path, **kwargs: Any) -> None:
        self.vm = FakeVm(machine)
        self.artifacts = artifacts
        self.kwargs = kwargs
        self.timings = {"boot_to_agent_s": 1.0}
        FakeGuest.booted.append(self)

    def __enter__(self) -> FakeGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def call(self, method: str, **params: Any) -> Any:
        """The agent methods a run calls around the scenario: identity and a clean log."""
        answers = {
            "system.info": {"kernel": "7.3.4-viommu-harness"},
            "system.dmesg_mark": "viommu-harness-mark-0",
            "system.dmesg": "[    1.0] edu: nothing to report\n",
        }
        assert method in answers, method
        return answers[method]


@pytest.fixture
def fake_guest(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeGuest]]:
    FakeGuest.booted = []
    monkeypatch.setattr(runner, "Guest", FakeGuest)
    yield FakeGuest


def test_execute_writes_verdict_and_bundle_on_failure(
    tmp_path: Path, scenario: Scenario, prepared: runner.Prepared, fake_guest: type[FakeGuest]
) -> None:
    messages: list[str] = []
    params = runner.resolve_params(scenario, {"fail": True}, seed=5)
    verdict = runner.execute(scenario, prepared, params, tmp_path, log=messages.append)
    assert not verdict.passed
    assert verdict.facts["seed"] == 5
    assert verdict.facts["kernel_release"] == "7.3.4-viommu-harness"
    assert verdict.facts["repro_bundle"] == str(tmp_path / "repro.json")
    assert json.loads((tmp_path / "verdict.json").read_text())["passed"] is False
    bundle = repro.read_bundle(tmp_path)
    assert bundle.seed == 5
    assert bundle.guests[0].accel_used == "tcg"
    assert any("python -m harness repro" in m for m in messages)


def test_execute_passing_run_writes_no_bundle(
    tmp_path: Path, scenario: Scenario, prepared: runner.Prepared, fake_guest: type[FakeGuest]
) -> None:
    params = runner.resolve_params(scenario, {}, seed=5)
    assert runner.execute(scenario, prepared, params, tmp_path, log=lambda m: None).passed
    assert not (tmp_path / "repro.json").exists()


def test_execute_bundles_an_exception_and_reraises(
    tmp_path: Path, prepared: runner.Prepared, fake_guest: type[FakeGuest]
) -> None:
    def explode(guest: Any, params: Any) -> Verdict:
        raise RuntimeError("agent went away")

    broken = Scenario("unit-broken", 1, ("x86_64",), lambda a: GuestSpec(viommu="vtd"), explode, "")
    with pytest.raises(RuntimeError):
        runner.execute(broken, prepared, {"seed": 1}, tmp_path, log=lambda m: None)
    bundle = repro.read_bundle(tmp_path)
    assert bundle.outcome["error"] == "RuntimeError: agent went away"
    assert bundle.failed_checks == []


def test_replay_boots_the_recorded_machine_with_the_recorded_params(
    bundle_path: Path,
    prepared: runner.Prepared,
    fake_guest: type[FakeGuest],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from harness.qemu import probe

    monkeypatch.setattr(probe, "resolve_binary", lambda arch, qemu=None: qemu)
    monkeypatch.setattr(probe, "probe", lambda binary: SimpleNamespace(version_text="10.0.2"))
    monkeypatch.setattr(probe, "adapt_machine", lambda machine, caps: machine)
    bundle = repro.read_bundle(bundle_path)
    verdict = replay.replay_scenario(bundle, artifacts=tmp_path / "replay")
    (guest,) = fake_guest.booted
    assert guest.vm.machine == prepared.machine
    assert guest.kwargs["qemu"] == prepared.binary
    assert guest.kwargs["ready_marker"] == "READY"
    assert [c.name for c in verdict.failures] == bundle.failed_checks
    assert verdict.facts["seed"] == 77


def test_cli_replay_exit_status_is_the_verdict(
    bundle_path: Path,
    fake_guest: type[FakeGuest],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from harness.qemu import probe

    monkeypatch.setattr(probe, "resolve_binary", lambda arch, qemu=None: qemu)
    monkeypatch.setattr(probe, "probe", lambda binary: SimpleNamespace(version_text="10.0.2"))
    monkeypatch.setattr(probe, "adapt_machine", lambda machine, caps: machine)
    args = ["repro", str(bundle_path), "--json", "--artifacts", str(tmp_path / "r")]
    assert main(args) == 1
    out = capsys.readouterr()
    assert [c["name"] for c in json.loads(out.out)["checks"] if not c["ok"]] == ["fails on request"]
    assert "same failing checks as the bundle" in out.err


@pytest.mark.parametrize(
    ("given", "seed", "expected"),
    [({"seed": 9}, None, 9), ({"seed": 9}, 3, 3), ({}, 4, 4)],
)
def test_seed_convention(scenario: Scenario, given: dict, seed: int | None, expected: int) -> None:
    assert runner.resolve_params(scenario, given, seed)["seed"] == expected


def test_seed_is_random_when_not_given(scenario: Scenario) -> None:
    seeds = {runner.resolve_params(scenario, {})["seed"] for _ in range(5)}
    assert len(seeds) > 1
    assert runner.resolve_params(scenario, {"x": 1})["fail"] is False


def test_seed_must_be_an_integer(scenario: Scenario) -> None:
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="seed=True"):
        runner.resolve_params(scenario, {"seed": True})


def test_test_bundle_reruns_through_pytest(tmp_path: Path, prepared: runner.Prepared) -> None:
    record = repro.guest_record(
        name="g",
        machine=prepared.machine,
        binary=prepared.binary,
        ready_marker="READY",
        image=prepared.image,
        accel_used="tcg",
        artifacts=tmp_path,
    )
    data = repro.failed_test_bundle(
        nodeid="tests/vm/test_x.py::test_y",
        rootdir=tmp_path,
        options=["--accel", "tcg"],
        seed=12,
        guests=[record],
        error="AssertionError",
    )
    bundle = repro.read_bundle(repro.write_bundle(data, tmp_path))
    argv = replay.rerun_command(bundle, keep=True, qemu="/q")
    assert argv[1:] == [
        "-m", "pytest", "tests/vm/test_x.py::test_y", "--qemu", "/q", "--accel", "tcg",
        "--seed", "12", "--keep-on-failure", "-s",
    ]  # fmt: skip


def test_run_scenario_applies_the_prepare_hook_and_overrides(
    scenario: Scenario, prepared: runner.Prepared, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: dict[str, Any] = {}

    def fake_prepare(scen: Scenario, arch: str, **kwargs: Any) -> runner.Prepared:
        asked.update(kwargs, arch=arch)
        return prepared

    def fake_execute(
        scen: Scenario, prep: runner.Prepared, params: Any, art: Path, **kw: Any
    ) -> Any:
        return prep, params

    hooked = runner.Prepared(prepared.machine.with_(extra_args=("-x",)), "q", "R", {}, {})
    monkeypatch.setattr(runner, "prepare_machine", fake_prepare)
    monkeypatch.setattr(runner, "execute", fake_execute)
    monkeypatch.setitem(runner.PREPARE_HOOKS, SCENARIO, lambda prep, log: hooked)
    result: Any = runner.run_scenario(
        SCENARIO, params={"fail": True}, viommu_options={"flts": False}, seed=8,
        artifacts=tmp_path,
    )  # fmt: skip
    assert result == (hooked, {"fail": True, "seed": 8})
    assert asked["arch"] == "x86_64" and asked["viommu_options"] == {"flts": False}
