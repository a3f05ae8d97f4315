"""Which kernel ran, as a run records it (verdict facts, repro bundle, matrix entries), and
where a run's artifacts go by default."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from harness import artifacts, repro
from harness.errors import ConfigError
from harness.profiles import make_devices, make_viommu
from harness.qemu.description import Machine
from harness.qualify.matrix import expand
from harness.scenarios import runner
from harness.scenarios.base import GuestSpec, Scenario, Verdict

pytestmark = pytest.mark.tier0

TREE_IDENTITY = {
    "source": "tree /src/linux",
    "tree": "/src/linux",
    "commit": "a" * 40,
    "dirty": "0123456789abcdef",
    "describe": "v7.3.4-2-gaaaaaaaaaaaa+dirty",
    "kernel_flavor": "debug",
    "release": "7.3.4-viommu-harness",
    "config_sha256": "c" * 64,
}


# -- artifacts root ---------------------------------------------------------------------


def test_artifacts_default_to_a_private_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(artifacts.ENV, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    root = artifacts.artifacts_root()
    assert root == tmp_path / "state" / "viommu-harness" / "artifacts"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    made = artifacts.new_artifacts_dir("boot-x86_64")
    assert made.parent == root
    assert not (tmp_path / "artifacts").exists()  # nothing in the working directory


def test_artifacts_fall_back_to_local_state_and_honour_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(artifacts.ENV, raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "state" / "viommu-harness" / "artifacts"
    assert artifacts.default_root() == expected
    monkeypatch.setenv(artifacts.ENV, str(tmp_path / "ci"))
    assert artifacts.artifacts_root() == tmp_path / "ci"


def test_scripts_test_keeps_the_checkout_artifacts_for_ci() -> None:
    script = (Path(__file__).resolve().parents[2] / "scripts" / "test").read_text()
    assert 'export VIOMMU_ARTIFACTS="$here/artifacts"' in script


# -- identity in facts and bundles --------------------------------------------------------


@pytest.fixture
def prepared(tmp_path: Path) -> runner.Prepared:
    for name in ("kernel", "initrd", "qemu"):
        (tmp_path / name).write_bytes(name.encode())
    image = runner.image_identity(
        type(
            "Image",
            (),
            {
                "key": "k",
                "arch": "x86_64",
                "flavor": "default",
                "kernel_release": "7.3.4-viommu-harness",
                "kernel_flavor": "debug",
                "kernel_identity": TREE_IDENTITY,
            },
        )()
    )
    machine = Machine(
        arch="x86_64",
        kernel=tmp_path / "kernel",
        initrd=tmp_path / "initrd",
        viommu=make_viommu("vtd", {}),
        devices=make_devices(["edu"]),
    )
    return runner.Prepared(machine, str(tmp_path / "qemu"), "READY", image, {})


class _Guest:
    """The agent calls ``kernel_facts`` makes, answered as a booted guest would."""

    def call(self, method: str, **params: Any) -> Any:
        assert method == "system.info"
        return {"kernel": "7.3.4-viommu-harness"}

    def run(self, command: str, timeout: float = 0) -> Any:
        assert command == runner.CONFIG_SHA256_COMMAND
        return type("Result", (), {"status": 0, "stdout": "e" * 64 + "\n"})()


def test_image_identity_carries_the_kernel_identity(prepared: runner.Prepared) -> None:
    assert prepared.image["kernel"] == TREE_IDENTITY
    assert prepared.image["kernel_flavor"] == "debug"


def test_kernel_facts_add_the_guests_uname_and_keep_the_built_config_hash() -> None:
    facts = runner.kernel_facts(TREE_IDENTITY, _Guest())  # type: ignore[arg-type]
    assert facts["uname_r"] == "7.3.4-viommu-harness"
    assert facts["config_sha256"] == "c" * 64  # the build's, not asked from the guest
    assert {"source", "commit", "dirty", "kernel_flavor"} <= set(facts)


def test_a_kernel_file_gets_its_config_hash_from_the_guest(tmp_path: Path) -> None:
    from harness.images.choice import file_identity

    (tmp_path / "bzImage").write_bytes(b"k")
    facts = runner.kernel_facts(file_identity(tmp_path / "bzImage"), _Guest())  # type: ignore[arg-type]
    assert facts["config_sha256"] == "e" * 64


def test_bundle_records_the_identity_and_repro_can_swap_the_kernel(
    tmp_path: Path, prepared: runner.Prepared
) -> None:
    scenario = Scenario(
        name="unit-identity",
        tier=1,
        arches=("x86_64",),
        guest=lambda arch: GuestSpec(viommu="vtd"),
        run=lambda guest, params: Verdict("unit-identity"),
        description="fake",
    )
    data = repro.scenario_bundle(scenario, {"seed": 1}, prepared, None, tmp_path, verdict=None)
    path = repro.write_bundle(data, tmp_path / "out")
    bundle = repro.read_bundle(path)
    kernel = bundle.guests[0].kernel
    assert kernel["commit"] == "a" * 40 and kernel["dirty"] == "0123456789abcdef"
    assert kernel["kernel_flavor"] == "debug" and kernel["config_sha256"] == "c" * 64
    assert kernel["path"] == str(tmp_path / "kernel")  # the file identity stays
    other = tmp_path / "other-bzImage"
    other.write_bytes(b"other")
    swapped = repro.with_kernel(bundle, other, {"source": f"file {other}", "commit": ""})
    record = swapped.guests[0]
    assert record.machine.kernel == other
    assert record.kernel["path"] == str(other) and record.kernel["source"] == f"file {other}"
    assert record.image["kernel_override"] == str(other)
    assert repro.check_files(swapped) == []


# -- matrix ------------------------------------------------------------------------------


def _registry() -> dict[str, Scenario]:
    smoke = Scenario(
        name="smoke",
        tier=2,
        arches=("x86_64",),
        guest=lambda arch: GuestSpec(viommu="vtd"),
        run=lambda guest, params: Verdict("smoke"),
        description="smoke",
    )
    return {"smoke": smoke}


def test_matrix_kernel_entry_can_name_a_tree_and_a_kernel_flavor() -> None:
    data = {
        "name": "t",
        "scenarios": ["smoke"],
        "viommus": {"vtd": {"options": {"plain": {}}}},
        "kernels": {"mine": {"tree": "/src/linux", "kernel_flavor": "debug"}, "pkg": None},
    }
    variants = {v.kernel_label: v for v in expand(data, _registry()).variants}
    kwargs = variants["mine"].run_kwargs()
    assert kwargs["kernel_tree"] == Path("/src/linux") and kwargs["kernel_flavor"] == "debug"
    assert "kernel_tree" not in variants["pkg"].run_kwargs()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"tree": "/t", "kernel": "/k"}, "tree and kernel exclude each other"),
        ({"kernel": "/k", "kernel_flavor": "debug"}, "kernel_flavor builds a kernel"),
        ({"tre": "/t"}, r"matrix\.kernels\.k\.tre: unknown key"),
    ],
)
def test_matrix_kernel_entry_errors(entry: dict[str, str], problem: str) -> None:
    data = {"name": "t", "scenarios": ["smoke"], "kernels": {"k": entry}}
    with pytest.raises(ConfigError, match=problem):
        expand(data, _registry())
