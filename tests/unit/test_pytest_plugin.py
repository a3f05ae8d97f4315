"""The pytest plugin: options, markers, skips naming the missing capability, artifacts."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import pytest_plugin as plugin

pytestmark = pytest.mark.tier0
pytest_plugins = ["pytester"]


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose runs load the plugin, with artifacts and images in its tmp dir."""
    monkeypatch.delenv("VIOMMU_IMAGE_CACHE", raising=False)
    monkeypatch.setenv("VIOMMU_ARTIFACTS", str(pytester.path / "artifacts"))
    pytester.makeini("[pytest]\naddopts = -p harness.pytest_plugin --strict-markers\n")
    return pytester


def test_options_are_offered(inner: pytest.Pytester) -> None:
    result = inner.runpytest("--help")
    for option in ("--qemu=*ARCH=*PATH", "--arch=", "--accel=", "--viommu=", "--host-device=BDF",
                   "--images=DIR", "--keep-on-failure", "--seed=N"):  # fmt: skip
        result.stdout.fnmatch_lines([f"*{option}*"])


def test_markers_are_registered(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        @pytest.mark.tier0
        @pytest.mark.tier1
        @pytest.mark.tier2
        @pytest.mark.tier3
        @pytest.mark.vtd
        @pytest.mark.smmuv3
        @pytest.mark.x86_64
        @pytest.mark.arm64
        @pytest.mark.slow
        @pytest.mark.kconfig("IOMMUFD_TEST")
        def test_marked():
            pass
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_arch_and_viommu_deselect_with_a_reason(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest
        @pytest.mark.x86_64
        @pytest.mark.vtd
        def test_vtd(): pass
        @pytest.mark.arm64
        @pytest.mark.smmuv3
        def test_smmu(): pass
        def test_neutral(): pass
        """
    )
    result = inner.runpytest("--arch", "x86_64", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*--arch=x86_64 deselects this guest arch*"])
    result = inner.runpytest("--viommu", "smmuv3", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["*--viommu=smmuv3 deselects this vIOMMU*"])


def test_images_option_sets_the_cache_the_images_code_uses(inner: pytest.Pytester) -> None:
    cache = inner.path / "my-images"
    inner.makepyfile(
        f"""
        import os
        from pathlib import Path
        from harness.images.cache import Cache
        def test_cache():
            assert os.environ["VIOMMU_IMAGE_CACHE"] == {str(cache)!r}
            assert Cache().root == Path({str(cache)!r})
        """
    )
    inner.runpytest("--images", str(cache)).assert_outcomes(passed=1)


def test_seed_option_header_and_fixture(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_seed(seed):\n    assert seed == 4242\n")
    result = inner.runpytest("--seed", "4242")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["viommu-harness: seed 4242 (replay with --seed)*"])


def test_failure_prints_artifacts_and_console_and_records_junit(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        from harness import pytest_plugin as plugin
        def test_fails(request, artifacts_dir):
            guest_dir = artifacts_dir / "g"
            guest_dir.mkdir()
            (guest_dir / "console.log").write_text("boot\\nlast console line\\n")
            plugin._register(request.node, plugin.GuestRun("g", guest_dir))
            assert False, "deliberate"
        def test_passes(artifacts_dir):
            assert artifacts_dir.is_dir()
        """
    )
    junit = inner.path / "junit.xml"
    result = inner.runpytest(f"--junitxml={junit}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*guest g: artifacts */artifacts/tests/test_fails-*/g*",
                                 "*last console line*"])  # fmt: skip
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_fails"].iter("property")}
    assert Path(props["artifacts:g"]).name == "g"
    assert Path(props["artifacts"]).is_dir()
    assert Path(props["artifacts"]).parent == inner.path / "artifacts" / "tests"
    passing = {p.get("name") for p in cases["test_passes"].iter("property")}
    assert passing == {"artifacts"}


def test_registered_scenarios_are_parametrized_with_markers(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.scenarios import base

    monkeypatch.setattr(base, "REGISTRY", dict(base.load_all()))
    inner.makeconftest(
        """
        from harness.scenarios import base
        from harness.scenarios.base import GuestSpec, Verdict

        def _register(name, tier, arches, guest, module):
            def run(guest, params):
                return Verdict(name)
            run.__module__ = module
            base.load_all()
            base.REGISTRY.pop(name, None)
            base.scenario(name, tier=tier, arches=arches, guest=guest)(run)

        _register("plug-both", 2, ("x86_64", "arm64"),
                  lambda a: GuestSpec({"x86_64": "vtd", "arm64": "smmuv3"}[a]),
                  "harness.scenarios.fake")
        _register("plug-mock", 1, ("x86_64",), GuestSpec(None), "harness.scenarios.fake")
        _register("plug-tier0", 0, ("x86_64",), GuestSpec(None), "harness.scenarios.fake")
        _register("plug-test-only", 1, ("x86_64",), GuestSpec(None), "tests.vm.test_x")
        """
    )
    inner.makepyfile("def test_scenario(registered_scenario):\n    pass\n")
    result = inner.runpytest("--collect-only", "-q")
    ids = {line.split("[", 1)[1].rstrip("]") for line in result.outlines if "[plug-" in line}
    assert ids == {"plug-both-x86_64", "plug-both-arm64", "plug-mock-x86_64"}
    result = inner.runpytest("--collect-only", "-q", "-m", "smmuv3 and tier2 and arm64")
    assert [line.partition("::")[2] for line in result.outlines if "[plug-" in line] == [
        "test_scenario[plug-both-arm64]"
    ]
    result = inner.runpytest("--collect-only", "-q", "-m", "tier1")
    assert [line.partition("::")[2] for line in result.outlines if "[plug-" in line] == [
        "test_scenario[plug-mock-x86_64]"
    ]


def test_a_named_qemu_binary_that_is_missing_fails_with_its_name(inner: pytest.Pytester) -> None:
    """--qemu names a binary: its absence is the user's mistake, not a missing capability."""
    inner.makepyfile(
        """
        def test_scenario(run_registered):
            run_registered("smoke-vfio-edu", "x86_64")
        def test_boot(boot_guest):
            boot_guest("x86_64", "vtd")
        """
    )
    result = inner.runpytest("--qemu", "x86_64=/nonexistent/qemu-system-x86_64", "-rs")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*QEMU binary '/nonexistent/qemu-system-x86_64' not found*"])


def test_an_uninstalled_qemu_skips_with_its_name(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No QEMU installed for the arch: a prerequisite (QemuNotFoundError), so a skip."""
    monkeypatch.setenv("PATH", "/nonexistent")
    inner.makepyfile("def test_boot(boot_guest):\n    boot_guest('x86_64', 'vtd')\n")
    result = inner.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*QEMU binary 'qemu-system-x86_64' not found*"])


def test_kvm_for_a_foreign_arch_skips_naming_kvm(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_boot(boot_guest):\n    boot_guest('arm64', 'smmuv3')\n")
    result = inner.runpytest("--accel", "kvm", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no KVM: an arm64 guest cannot use KVM on this x86_64 host*"])


def test_host_device_fixture_skips_without_a_device(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_pass(host_device):\n    pass\n")
    result = inner.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no host device: pass --host-device BDF*"])


@pytest.mark.parametrize(
    ("values", "arch", "expected"),
    [
        ([], "x86_64", None),
        (["/q/qemu-system-aarch64"], "x86_64", None),
        (["/q/qemu-system-aarch64"], "arm64", "/q/qemu-system-aarch64"),
        (["/q/my-qemu"], "arm64", "/q/my-qemu"),
        (["arm64=/a", "x86_64=/x"], "x86_64", "/x"),
        (["x86_64=/x"], "arm64", None),
        (["/q/qemu-system-x86_64", "/q/qemu-system-aarch64"], "arm64", "/q/qemu-system-aarch64"),
    ],
)
def test_qemu_for(values: list[str], arch: str, expected: str | None) -> None:
    assert plugin.qemu_for(values, arch) == expected


def test_kvm_skip_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import host
    from harness.qemu import accel

    monkeypatch.setattr(host, "host_arch", lambda: "x86_64")
    assert plugin.kvm_skip_reason("x86_64", "tcg") is None
    assert plugin.kvm_skip_reason("x86_64", "auto") is None
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert plugin.kvm_skip_reason("x86_64", "kvm") == "no KVM: /dev/kvm does not exist"
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    monkeypatch.setattr(accel, "kvm_available", lambda arch: False)
    assert "not readable and writable" in str(plugin.kvm_skip_reason("x86_64", "kvm"))
    monkeypatch.setattr(accel, "kvm_available", lambda arch: True)
    monkeypatch.setattr(accel, "kvm_verdict", lambda arch: False)
    assert "KVM internal error" in str(plugin.kvm_skip_reason("x86_64", "kvm"))
    monkeypatch.setattr(accel, "kvm_verdict", lambda arch: None)
    assert plugin.kvm_skip_reason("x86_64", "kvm") is None


def test_kconfig_skip_reason(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_IOMMUFD=y\nCONFIG_VFIO=m\n# CONFIG_IOMMUFD_TEST is not set\n")
    image = type("Image", (), {"config": config, "key": "k1", "kernel_release": "7.3.4"})()
    assert plugin.kconfig_skip_reason(image, ["IOMMUFD", "CONFIG_VFIO"]) is None
    assert plugin.kconfig_skip_reason(image, ["IOMMUFD_TEST", "IOMMUFD"]) == (
        "guest kernel 7.3.4 lacks CONFIG_IOMMUFD_TEST (image k1)"
    )


def test_host_device_skip_reasons(tmp_path: Path) -> None:
    sysfs = tmp_path / "devices"
    dev = sysfs / "0000:01:00.0"
    dev.mkdir(parents=True)
    drivers = tmp_path / "drivers"
    (drivers / "e1000e").mkdir(parents=True)
    (drivers / "vfio-pci").mkdir()
    assert "pass --host-device" in str(plugin.host_device_skip_reason(None, sysfs))
    assert plugin.host_device_skip_reason("02:00.0", sysfs) == (
        "host device 0000:02:00.0 does not exist"
    )
    assert "bound to no driver, not vfio-pci" in str(
        plugin.host_device_skip_reason("01:00.0", sysfs)
    )
    (dev / "driver").symlink_to(drivers / "e1000e")
    assert "bound to e1000e, not vfio-pci" in str(plugin.host_device_skip_reason("01:00.0", sysfs))
    (dev / "driver").unlink()
    (dev / "driver").symlink_to(drivers / "vfio-pci")
    assert "has no IOMMU group" in str(plugin.host_device_skip_reason("01:00.0", sysfs))
    (dev / "iommu_group").mkdir()
    assert plugin.host_device_skip_reason("0000:01:00.0", sysfs) is None


def test_nightly_tests_are_collected_only_in_the_nightly_environment(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(
        """
        import pytest
        @pytest.mark.nightly
        def test_long(): pass
        def test_short(): pass
        """
    )
    monkeypatch.delenv("VIOMMU_NIGHTLY", raising=False)
    inner.runpytest().assert_outcomes(passed=1, deselected=1)
    monkeypatch.setenv("VIOMMU_NIGHTLY", "1")
    inner.runpytest().assert_outcomes(passed=2)
