"""Kernel config fragments and the check that no requested option was silently dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.images.errors import KernelConfigError
from harness.images.kconfig import merge_requests, mismatches, parse_config, parse_fragment
from harness.images.kernel import check_config

pytestmark = pytest.mark.tier0

FRAGMENTS = Path(__file__).resolve().parents[2] / "images" / "kernel"

COMMON = """\
# base
CONFIG_IOMMUFD=y
CONFIG_MODULES=n
# CONFIG_CGROUPS is not set
CONFIG_LOCALVERSION="-viommu-harness"
CONFIG_NR_CPUS=8
"""

FINAL = """\
CONFIG_IOMMUFD=y
# CONFIG_MODULES is not set
CONFIG_LOCALVERSION="-viommu-harness"
CONFIG_NR_CPUS=8
"""


def test_matching_config_passes() -> None:
    check_config([("common.config", COMMON)], FINAL)


def test_missing_option_is_listed() -> None:
    final = FINAL.replace("CONFIG_IOMMUFD=y\n", "")
    with pytest.raises(KernelConfigError) as caught:
        check_config([("common.config", COMMON)], final)
    message = str(caught.value)
    assert "1 requested kernel option did not survive olddefconfig" in message
    assert "CONFIG_IOMMUFD=y (common.config:2): absent" in message
    assert "\n" not in message


def test_every_dropped_option_is_listed() -> None:
    final = FINAL.replace("CONFIG_IOMMUFD=y", "# CONFIG_IOMMUFD is not set").replace(
        "CONFIG_NR_CPUS=8", "CONFIG_NR_CPUS=4"
    )
    final += "CONFIG_CGROUPS=y\n"
    with pytest.raises(KernelConfigError) as caught:
        check_config([("common.config", COMMON)], final)
    message = str(caught.value)
    assert message.startswith("kernel config: 3 requested kernel options")
    assert "CONFIG_IOMMUFD=y (common.config:2): not set" in message
    assert "CONFIG_NR_CPUS=8 (common.config:6): 4" in message
    assert "CONFIG_CGROUPS=n (common.config:4): y" in message


def test_module_instead_of_builtin_is_a_mismatch() -> None:
    found = mismatches(merge_requests([("a", "CONFIG_VFIO=y\n")]), {"CONFIG_VFIO": "m"})
    assert [m.describe() for m in found] == ["CONFIG_VFIO=y (a:1): m"]


def test_not_set_is_honoured_by_absence() -> None:
    requests = merge_requests([("a", "CONFIG_MODULES=n\n# CONFIG_CGROUPS is not set\n")])
    assert mismatches(requests, {}) == []


def test_later_fragment_wins() -> None:
    requests = merge_requests([("common", "CONFIG_X=y\n"), ("arch", "CONFIG_X=n\n")])
    assert requests["CONFIG_X"].value == "n"
    assert requests["CONFIG_X"].origin == "arch:1"
    assert mismatches(requests, {"CONFIG_X": "n"}) == []


def test_malformed_fragment_line_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"frag:2: not a kernel option assignment"):
        parse_fragment("CONFIG_A=y\nCONFIG_B y\n", "frag")


def test_parse_config_reads_values_and_not_set() -> None:
    assert parse_config(FINAL + "# comment\n") == {
        "CONFIG_IOMMUFD": "y",
        "CONFIG_MODULES": "n",
        "CONFIG_LOCALVERSION": '"-viommu-harness"',
        "CONFIG_NR_CPUS": "8",
    }


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_checkout_fragments_request_what_the_tiers_need(arch: str) -> None:
    fragments = [
        (name, (FRAGMENTS / name).read_text()) for name in ("common.config", f"{arch}.config")
    ]
    requests = merge_requests(fragments)
    needed = [
        "IOMMUFD",
        "IOMMUFD_TEST",
        "VFIO",
        "VFIO_PCI",
        "VFIO_DEVICE_CDEV",
        "VFIO_CONTAINER",
        "DEBUG_FS",
        "IOMMU_DEBUGFS",
        "PCI_PASID",
        "FW_CFG_SYSFS",
        "VIRTIO_NET",
        "BLK_DEV_INITRD",
        "DEVTMPFS",
        "UNIX98_PTYS",
    ]
    needed += (
        ["INTEL_IOMMU", "INTEL_IOMMU_SVM", "SERIAL_8250_CONSOLE"]
        if arch == "x86_64"
        else ["ARM_SMMU_V3", "ARM_SMMU_V3_IOMMUFD", "ACPI_IORT", "KVM", "SERIAL_AMBA_PL011_CONSOLE"]
    )
    for name in needed:
        assert requests[f"CONFIG_{name}"].value == "y", name
