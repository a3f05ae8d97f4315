"""Expected-results judging, the vIOMMU matrix and binary selection of harness kselftest."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.devices import EDU, IGB, probe
from harness.errors import ConfigError
from harness.kselftest import expected
from harness.kselftest.build import SUITES
from harness.kselftest.matrix import MATRIX, configs, select
from harness.profiles import make_devices
from harness.qemu.argv import RunEndpoints, build_argv
from harness.qemu.description import Igb, Machine, machine_from_dict

ENTRIES = [
    expected.Expectation(
        "vfio_dma_mapping_test", ("*hugetlb_1gb*",), ("arm64/*",), "skip", "no 1G page"
    ),
    expected.Expectation("iommufd", ("*",), ("*",), "fail", "upstream bug"),
]


def test_judgements() -> None:
    judge = expected.judge
    assert judge(ENTRIES, "vfio_pci_driver_test", "a.b.c", "x86_64/vtd-legacy", "pass").ok
    hit = judge(
        ENTRIES, "vfio_dma_mapping_test", "m.iommufd_anonymous_hugetlb_1gb.t", "arm64/s", "skip"
    )
    assert (hit.status, hit.reason, hit.ok) == ("expected", "no 1G page", True)
    # the same skip elsewhere is not covered
    miss = judge(ENTRIES, "vfio_dma_mapping_test", "m.x_hugetlb_1gb.t", "x86_64/v", "skip", "why")
    assert (miss.status, miss.ok) == ("unexpected", False) and "why" in miss.reason
    # an expected failure that passes is reported, and fails the run
    fixed = judge(ENTRIES, "iommufd", "f.v.t", "arm64/smmuv3-s1", "pass")
    assert (fixed.status, fixed.ok) == ("fixed", False) and "upstream bug" in fixed.reason
    # an expected failure that errors instead is not the expected outcome
    assert not judge(ENTRIES, "iommufd", "f.v.t", "arm64/s", "error", "hang").ok


def test_expected_file_loads_and_every_entry_has_a_reason() -> None:
    entries = expected.load()
    known = {name for names in SUITES.values() for name in names}
    for entry in entries:
        assert entry.binary in known, entry
        assert len(entry.reason) > 20, entry


def test_bad_expected_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[[expected]]\nbinary = "iommufd"\noutcome = "skip"\n')
    with pytest.raises(ConfigError, match="missing reason"):
        expected.load(path)
    path.write_text('[[expected]]\nbinary = "iommufd"\noutcome = "pass"\nreason = "r"\n')
    with pytest.raises(ConfigError, match="outcome 'pass'"):
        expected.load(path)


def test_matrix_and_selection() -> None:
    assert [c.label for c in configs("x86_64", None, {}, [])] == [c.label for c in MATRIX["x86_64"]]
    assert [c.label for c in configs("arm64", None, {}, ["smmuv3-s2"])] == ["smmuv3-s2"]
    adhoc = configs("x86_64", "vtd", {"flts": False}, [])
    assert len(adhoc) == 1 and adhoc[0].options["flts"] is False
    assert adhoc[0].where == "x86_64/vtd-flts=False"
    with pytest.raises(ConfigError, match="not a vIOMMU of arm64"):
        configs("arm64", "vtd", {}, [])
    with pytest.raises(ConfigError, match="unknown x86_64 configuration"):
        configs("x86_64", None, {}, ["nope"])
    whole = select("all", [])
    assert set(whole.binaries) == {"iommu", "vfio"}
    assert whole.binaries["vfio"] == SUITES["vfio"]
    one = select("vfio", ["vfio_pci_driver_test:vfio_pci_driver_test.iommufd.memcpy_success"])
    assert one.binaries == {"vfio": ("vfio_pci_driver_test",)}
    assert one.tests == {"vfio_pci_driver_test": ("vfio_pci_driver_test.iommufd.memcpy_success",)}
    with pytest.raises(ConfigError, match="no binary 'iommufd' in suite vfio"):
        select("vfio", ["iommufd"])


def test_igb_sits_on_its_own_root_port_on_both_machines() -> None:
    endpoints = RunEndpoints(Path("/q"), Path("/c"), Path("/l"))
    for arch in ("x86_64", "arm64"):
        machine = Machine(
            arch=arch,  # type: ignore[arg-type]
            kernel=Path("/k"),
            initrd=Path("/i"),
            devices=make_devices(["igb"]),
        )
        argv = build_argv(machine, endpoints, "tcg")
        assert "pcie-root-port,id=rp-igb0,chassis=16" in argv
        assert "igb,id=igb0,bus=rp-igb0" in argv
        assert machine_from_dict(machine.describe()) == machine
    # the host description and the guest-side device table agree on the ids
    assert probe(Igb.VENDOR_ID, Igb.DEVICE_ID) == IGB
    assert probe(0x1234, 0x11E8) == EDU and probe(0x1AF4, 0x1000) is None
    with pytest.raises(ConfigError, match=r"igb\.chassis"):
        Igb(chassis=300).validate()
    with pytest.raises(ConfigError, match="igb takes no options"):
        make_devices(["igb:x=1"])
