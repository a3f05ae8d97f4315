"""Machine description -> QEMU argv: every option, every rejected combination."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.qemu.argv import AUTHORIZED_KEYS_FW_CFG, RunEndpoints, build_argv, resolved_accel
from harness.qemu.description import (
    Edu,
    IntelIommu,
    Machine,
    Pvpanic,
    SmmuV3,
    UserNic,
    VfioPci,
    machine_from_dict,
)

pytestmark = pytest.mark.tier0

RUN = RunEndpoints(
    qmp_socket=Path("/run/x/qmp.sock"),
    console_log=Path("/a/console.log"),
    qemu_log=Path("/a/qemu.log"),
    authorized_keys=Path("/run/x/authorized_keys"),
    ssh_port=2222,
)


def x86(**kw: object) -> Machine:
    return Machine(arch="x86_64", kernel=Path("/k/bzImage"), initrd=Path("/k/rootfs.cpio"), **kw)  # type: ignore[arg-type]


def arm(**kw: object) -> Machine:
    return Machine(arch="arm64", kernel=Path("/k/Image"), initrd=Path("/k/rootfs.cpio"), **kw)  # type: ignore[arg-type]


def arg_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_same_description_same_argv() -> None:
    m = x86(viommu=IntelIommu(scalable_mode=True, flts=True), devices=(Edu(), UserNic()))
    assert build_argv(m, RUN, "tcg") == build_argv(m, RUN, "tcg")
    assert build_argv(m, RUN, "tcg") == build_argv(machine_from_dict(m.describe()), RUN, "tcg")


def test_x86_base_command_line() -> None:
    argv = build_argv(x86(memory_mb=1024, smp=4, append="quiet"), RUN, "tcg")
    assert argv[0] == "qemu-system-x86_64"
    assert arg_after(argv, "-machine") == ["q35"]
    assert arg_after(argv, "-accel") == ["tcg,thread=single"]  # see argv.X86_TCG_ACCEL
    assert arg_after(argv, "-cpu") == ["max"]
    assert arg_after(argv, "-m") == ["1024M"]
    assert arg_after(argv, "-smp") == ["4"]
    assert arg_after(argv, "-kernel") == ["/k/bzImage"]
    assert arg_after(argv, "-initrd") == ["/k/rootfs.cpio"]
    assert arg_after(argv, "-append") == ["console=ttyS0 panic=-1 quiet"]
    assert arg_after(argv, "-qmp") == ["unix:/run/x/qmp.sock,server=on,wait=off"]
    assert arg_after(argv, "-fw_cfg") == [
        f"name={AUTHORIZED_KEYS_FW_CFG},file=/run/x/authorized_keys"
    ]
    assert "-nodefaults" in argv


def test_kvm_uses_host_cpu_and_split_irqchip_for_vtd() -> None:
    argv = build_argv(x86(viommu=IntelIommu(intremap="on")), RUN, "kvm")
    assert arg_after(argv, "-machine") == ["q35,kernel-irqchip=split"]
    assert arg_after(argv, "-cpu") == ["host"]


@pytest.mark.parametrize(
    ("field", "value", "prop"),
    [
        ("aw_bits", 39, "aw-bits=39"),
        ("aw_bits", 48, "aw-bits=48"),
        ("caching_mode", True, "caching-mode=on"),
        ("device_iotlb", True, "device-iotlb=on"),
        ("intremap", "off", "intremap=off"),
        ("snoop_control", True, "snoop-control=on"),
        ("dma_drain", False, "dma-drain=off"),
        ("pt", False, "pt=off"),
        ("fs1gp", False, "fs1gp=off"),
    ],
)
def test_vtd_option(field: str, value: object, prop: str) -> None:
    argv = build_argv(x86(viommu=IntelIommu(**{field: value})), RUN, "tcg")  # type: ignore[arg-type]
    assert arg_after(argv, "-device") == [f"intel-iommu,{prop}"]


def test_vtd_scalable_flts_pasid() -> None:
    viommu = IntelIommu(scalable_mode=True, flts=True, pasid_mode=True)
    argv = build_argv(x86(viommu=viommu), RUN, "tcg")
    assert arg_after(argv, "-device") == [
        "intel-iommu,x-scalable-mode=on,x-flts=on,x-pasid-mode=on"
    ]


def test_vtd_defaults_emit_no_properties() -> None:
    assert arg_after(build_argv(x86(viommu=IntelIommu()), RUN, "tcg"), "-device") == ["intel-iommu"]


@pytest.mark.parametrize(
    ("viommu", "message"),
    [
        (IntelIommu(flts=True), "x-flts=on needs x-scalable-mode=on"),
        (IntelIommu(pasid_mode=True), "x-pasid-mode=on needs x-scalable-mode=on"),
        (IntelIommu(aw_bits=52), "aw-bits=52"),
        (IntelIommu(intremap="maybe"), "intremap"),  # type: ignore[arg-type]
    ],
)
def test_vtd_rejected(viommu: IntelIommu, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        x86(viommu=viommu)


def test_smmuv3_machine_option() -> None:
    argv = build_argv(arm(viommu=SmmuV3(stage="nested")), RUN, "tcg")
    assert arg_after(argv, "-machine") == ["virt,gic-version=3,iommu=smmuv3"]
    assert arg_after(argv, "-global") == ["arm-smmuv3.stage=nested"]
    assert argv[0] == "qemu-system-aarch64"
    assert arg_after(argv, "-append")[0].startswith("console=ttyAMA0 ")


@pytest.mark.parametrize(
    ("viommu", "machine_type"),
    [
        (SmmuV3(stage="1"), "virt-9.1"),
        (SmmuV3(stage="2"), "virt-9.1"),
        (SmmuV3(stage="nested"), "virt"),
        (SmmuV3(), "virt"),
        (SmmuV3(device=True, stage="1"), "virt"),
        (None, "virt"),
    ],
)
def test_single_stage_smmu_gets_a_machine_type_that_honours_it(
    viommu: SmmuV3 | None, machine_type: str
) -> None:
    # virt-9.2+ forces its own SMMU to stage=nested whatever -global says
    (machine,) = arg_after(build_argv(arm(viommu=viommu), RUN, "tcg"), "-machine")
    assert machine.split(",")[0] == machine_type


def test_smmuv3_device_with_new_properties() -> None:
    viommu = SmmuV3(device=True, stage="1", accel=True, ats=True, ril=False, pasid=True, oas=44)
    argv = build_argv(arm(viommu=viommu), RUN, "tcg")
    assert arg_after(argv, "-machine") == ["virt,gic-version=3"]
    assert arg_after(argv, "-device")[0] == (
        "arm-smmuv3,primary-bus=pcie.0,stage=1,accel=on,ats=on,ril=off,pasid=on,oas=44"
    )


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (lambda: x86(viommu=SmmuV3()), "smmuv3 needs arch=arm64"),
        (lambda: arm(viommu=IntelIommu()), "vtd needs arch=x86_64"),
        (lambda: arm(viommu=SmmuV3(accel=True)), "accel: only the user-creatable"),
        (lambda: arm(viommu=SmmuV3(stage="3")), "stage='3'"),  # type: ignore[arg-type]
        (lambda: arm(viommu=SmmuV3(device=True, oas=45)), "oas=45"),
        (lambda: x86(devices=(VfioPci(),)), "host BDF is required"),
        (lambda: x86(devices=(VfioPci(host="zz:00.0"),)), "not a PCI address"),
        (lambda: x86(devices=(Edu(), Edu())), "'edu0' is used twice"),
        (lambda: x86(devices=(Edu(id="1bad"),)), "not a valid QEMU id"),
        (lambda: x86(devices=(Edu(dma_mask=0),)), "dma_mask"),
        (lambda: x86(devices=(UserNic(), UserNic(id="n2"))), "only one user-mode NIC"),
        (lambda: x86(devices=(Pvpanic(), Pvpanic())), "pvpanic given twice"),
        (lambda: x86(firmware="uefi"), "arm64 guests only"),
        (lambda: arm(firmware="uefi"), "needs uefi_code"),
        (lambda: x86(memory_mb=16), "memory_mb=16"),
        (lambda: x86(smp=0), "smp=0"),
        (lambda: x86(accel="hvf"), "accel='hvf'"),
        (lambda: Machine(arch="riscv64", kernel=Path("k"), initrd=Path("i")), "arch='riscv64'"),  # type: ignore[arg-type]
    ],
)
def test_rejected_combinations(machine: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        machine()  # type: ignore[operator]


def test_devices() -> None:
    m = x86(
        devices=(
            Edu(dma_mask=0xFFFFFFF, addr="05.0"),
            VfioPci(host="0000:01:00.0"),
            VfioPci(host="02:00.0", backend="container", id="hd1"),
            UserNic(),
            Pvpanic(),
        )
    )
    argv = build_argv(m, RUN, "tcg")
    assert arg_after(argv, "-device") == [
        "edu,id=edu0,addr=05.0,dma_mask=0xfffffff",
        "vfio-pci,host=0000:01:00.0,id=hostdev0,iommufd=iommufd-hostdev0",
        "vfio-pci,host=02:00.0,id=hd1",
        "virtio-net-pci,netdev=net0",
        "pvpanic",
    ]
    assert arg_after(argv, "-object") == ["iommufd,id=iommufd-hostdev0"]
    assert arg_after(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]


def test_arm_nic_and_pvpanic_and_uefi() -> None:
    m = arm(devices=(UserNic(), Pvpanic()), firmware="uefi", uefi_code=Path("/fw/QEMU_EFI.fd"))
    argv = build_argv(m, RUN, "tcg")
    assert arg_after(argv, "-device") == ["virtio-net-device,netdev=net0", "pvpanic-pci"]
    assert arg_after(argv, "-bios") == ["/fw/QEMU_EFI.fd"]


def test_forwarded_port_binds_loopback_only() -> None:
    argv = build_argv(x86(devices=(UserNic(),)), RUN, "tcg")
    (netdev,) = arg_after(argv, "-netdev")
    assert "hostfwd=tcp:127.0.0.1:" in netdev
    assert "hostfwd=tcp::" not in netdev


def test_accel_resolution() -> None:
    assert resolved_accel(x86(), kvm_usable=True, host_arch="x86_64") == "kvm"
    assert resolved_accel(x86(), kvm_usable=False, host_arch="x86_64") == "tcg"
    assert resolved_accel(arm(), kvm_usable=True, host_arch="x86_64") == "tcg"
    assert resolved_accel(arm(), kvm_usable=True, host_arch="arm64") == "kvm"
    assert resolved_accel(x86(accel="tcg"), kvm_usable=True, host_arch="x86_64") == "tcg"
    assert resolved_accel(arm(accel="kvm"), kvm_usable=True, host_arch="arm64") == "kvm"
    with pytest.raises(ConfigError, match="arm64 guests cannot use KVM on this x86_64 host"):
        resolved_accel(arm(accel="kvm"), kvm_usable=True, host_arch="x86_64")
    with pytest.raises(ConfigError, match="resolve 'auto'"):
        build_argv(x86(), RUN, "auto")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"arch": "x86_64", "kernel": "k", "initrd": "i", "colour": 1}, "machine.colour: unknown"),
        (
            {"arch": "x86_64", "kernel": "k", "initrd": "i", "viommu": {"type": "Floppy"}},
            "machine.viommu: unknown or missing 'type'",
        ),
        (
            {"arch": "x86_64", "kernel": "k", "initrd": "i", "devices": [{"type": "Edu", "x": 1}]},
            r"machine.devices\[0\].x: unknown field",
        ),
        ({"arch": "x86_64"}, "missing"),
        ([1, 2], "expected an object"),
    ],
)
def test_machine_from_dict_rejects(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        machine_from_dict(data)  # type: ignore[arg-type]
