"""The passthrough machine of tier 3: QEMU's accelerated vIOMMU over a host iommufd.

Two topologies, as command-line fragments with a declarative description each:

- ``AccelSmmuTopology``: ``arm-smmuv3,accel=on`` on its own ``pxb-pcie`` root bus, one
  ``pcie-root-port`` + ``vfio-pci`` (iommufd backend) per host device.  QEMU 11 refuses
  emulated endpoints behind an accelerated SMMU, needs KVM (``kernel-irqchip=on``) and an
  ACPI (UEFI) guest, so the rest of the machine (NIC, pvpanic) stays off that bus.
- ``VtdFirstStage``: ``intel-iommu`` in scalable mode with first-stage translation over
  iommufd-backed ``vfio-pci`` devices (QEMU >= 11 names the properties ``scalable-mode`` /
  ``fsts``; 10.x ``x-scalable-mode`` / ``x-flts``: ``vtd_property_names`` picks).

Both go into ``Machine.extra_args`` with ``viommu=None``: the SMMU needs its root bus
created first and the devices need ``bus=``, which ``harness.qemu.description`` cannot
say yet.  ``l2_machine`` is the L2 guest of the simulated tier 3 (files inside L1).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.profiles import guest_machine
from harness.qemu.description import Machine, UserNic

#: where ``--host-device`` (``harness run``, ``harness tier3``) leaves the
#: BDF for the ``tier3-passthrough`` prepare hook
HOST_DEVICE_ENV = "VIOMMU_HOST_DEVICE"

_BDF = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_VALUE = re.compile(r"^[A-Za-z0-9_.-]+$")

#: trace events that show QEMU's nesting work on the host side (QEMU 11.1 names)
IOMMUFD_EVENTS = (
    "iommufd_backend_alloc_viommu",
    "iommufd_backend_alloc_vdev",
    "iommufd_backend_alloc_hwpt",
    "iommufd_backend_invalidate_cache",
    "iommufd_viommu_alloc_eventq",
    "iommufd_backend_free_id",
)
SMMU_ACCEL_EVENTS = (
    "smmuv3_accel_set_iommu_device",
    "smmuv3_accel_translate_ste",
    "smmuv3_accel_install_ste",
    "smmuv3_accel_unset_iommu_device",
    "smmuv3_cmdq_opcode",
    "smmuv3_cmdq_cfgi_cd",
    "smmuv3_propagate_event",
)
VTD_EVENTS = ("vtd_device_attach_hwpt", "vtd_device_detach_hwpt", "vtd_inv_desc*")


def full_bdf(bdf: str) -> str:
    """``0000:01:00.0`` for ``01:00.0``; ConfigError for anything that is not a PCI address."""
    full = bdf if bdf.count(":") == 2 else f"0000:{bdf}"
    if not _BDF.match(full):
        raise ConfigError(f"host device {bdf!r}: not a PCI address [DDDD:]BB:DD.F")
    return full.lower()


def add_host_device_option(parser: argparse.ArgumentParser) -> None:
    """``--host-device BDF``: the host PCI device tier 3 passes through (bound to vfio-pci)."""
    parser.add_argument(
        "--host-device",
        metavar="BDF",
        help="tier 3: a host PCI device for passthrough (e.g. 0000:01:00.0, bound to vfio-pci)",
    )


def apply_host_device(args: argparse.Namespace) -> str | None:
    """Export ``--host-device`` for the tier-3 prepare hook; the normalised BDF or None.

    Raises ``ConfigError`` for a value that is not a PCI address.
    """
    bdf = getattr(args, "host_device", None)
    if not bdf:
        return None
    full = full_bdf(bdf)
    os.environ[HOST_DEVICE_ENV] = full
    return full


def _props(values: Mapping[str, Any]) -> str:
    out = []
    for key, value in values.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        if not _VALUE.match(text):
            raise ConfigError(f"property {key}={text!r}: not a plain QEMU property value")
        out.append(f",{key}={text}")
    return "".join(out)


@dataclass(frozen=True)
class AccelSmmuTopology:
    """``arm-smmuv3,accel=on`` on a pxb-pcie root with each host device behind a root port."""

    hosts: tuple[str, ...]
    smmu_id: str = "smmuv3.1"
    bus: str = "pcie.1"
    bus_nr: int = 1
    iommufd_id: str = "iommufd0"
    options: Mapping[str, Any] = field(default_factory=dict)
    """Further ``arm-smmuv3`` properties (``ril``, ``ats``, ``oas``, ``ssidsize``)."""

    kind = "smmuv3"

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("arm-smmuv3,accel=on needs at least one cold-plugged vfio-pci device")
        object.__setattr__(self, "hosts", tuple(full_bdf(h) for h in self.hosts))
        if not 1 <= self.bus_nr <= 254:
            raise ConfigError(f"pxb-pcie bus_nr={self.bus_nr}: expected 1..254")
        if "accel" in self.options or "stage" in self.options:
            raise ConfigError("arm-smmuv3 accel/stage are fixed: accel=on supports stage 1 only")

    def args(self) -> list[str]:
        """The command-line fragment, in the order QEMU needs (bus before its users)."""
        argv = [
            "-object",
            f"iommufd,id={self.iommufd_id}",
            "-device",
            f"pxb-pcie,id={self.bus},bus_nr={self.bus_nr},bus=pcie.0",
            "-device",
            f"arm-smmuv3,primary-bus={self.bus},id={self.smmu_id},accel=on" + _props(self.options),
        ]
        for index, host in enumerate(self.hosts):
            port = f"{self.bus}.port{index}"
            argv += [
                "-device",
                f"pcie-root-port,id={port},bus={self.bus},chassis={self.bus_nr * 16 + index}",
                "-device",
                f"vfio-pci,host={host},bus={port},iommufd={self.iommufd_id},id=hostdev{index}",
            ]
        return argv

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hosts": list(self.hosts),
            "smmu": self.smmu_id,
            "bus": self.bus,
            "options": dict(self.options),
        }


def vtd_property_names(properties: Collection[str]) -> tuple[str, str]:
    """The (scalable mode, first stage) property names a QEMU's ``intel-iommu`` has."""
    if "fsts" in properties:
        return "scalable-mode", "fsts"
    if "x-flts" in properties:
        return "x-scalable-mode", "x-flts"
    raise ConfigError("intel-iommu has neither fsts (QEMU >= 11) nor x-flts (QEMU 10): too old")


@dataclass(frozen=True)
class VtdFirstStage:
    """``intel-iommu`` (scalable mode, first-stage translation) over iommufd vfio-pci devices."""

    hosts: tuple[str, ...]
    names: tuple[str, str] = ("scalable-mode", "fsts")
    iommufd_id: str = "iommufd0"
    options: Mapping[str, Any] = field(
        default_factory=lambda: {"caching-mode": True, "aw-bits": 48}
    )
    first_stage: bool = True
    """``False``: the same device without first-stage translation (no nesting: shadowing)."""

    kind = "vtd"

    def __post_init__(self) -> None:
        if not self.hosts:
            raise ConfigError("tier-3 VT-d: at least one host device is needed")
        object.__setattr__(self, "hosts", tuple(full_bdf(h) for h in self.hosts))

    def args(self, accel: str = "kvm") -> list[str]:
        """The command-line fragment; KVM needs the split irqchip for interrupt remapping."""
        scalable, first_stage = self.names
        argv = ["-machine", "kernel-irqchip=split"] if accel == "kvm" else []
        argv += [
            "-device",
            f"intel-iommu,{scalable}=on,{first_stage}={'on' if self.first_stage else 'off'}"
            + _props(self.options),
            "-object",
            f"iommufd,id={self.iommufd_id}",
        ]
        for index, host in enumerate(self.hosts):
            argv += ["-device", f"vfio-pci,host={host},iommufd={self.iommufd_id},id=hostdev{index}"]
        return argv

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hosts": list(self.hosts),
            "properties": list(self.names),
            "options": dict(self.options),
        }


Topology = AccelSmmuTopology | VtdFirstStage


def topology_for(arch: str, hosts: tuple[str, ...], properties: Collection[str] = ()) -> Topology:
    """The accelerated vIOMMU of ``arch``: SMMUv3 on arm64, VT-d on x86_64."""
    if arch == "arm64":
        return AccelSmmuTopology(hosts)
    if arch == "x86_64":
        names = vtd_property_names(properties) if properties else ("scalable-mode", "fsts")
        return VtdFirstStage(hosts, names=names)
    raise ConfigError(f"tier 3: no accelerated vIOMMU for arch {arch!r}")


def topology_args(topology: Topology, accel: str) -> list[str]:
    """``topology``'s fragment for ``accel`` (only VT-d's depends on it)."""
    if isinstance(topology, VtdFirstStage):
        return topology.args(accel)
    return topology.args()


def passthrough_machine(
    image: Any,
    topology: Topology,
    *,
    accel: str = "kvm",
    memory_mb: int = 2048,
    smp: int = 2,
) -> Machine:
    """The guest of a real KVM host with ``topology``; arm64 boots UEFI (accel SMMU: ACPI)."""
    arch = "arm64" if isinstance(topology, AccelSmmuTopology) else "x86_64"
    if image.arch != arch:
        raise ConfigError(f"tier 3 {topology.kind}: needs an {arch} guest image, got {image.arch}")
    if isinstance(topology, AccelSmmuTopology) and accel != "kvm":
        raise ConfigError("arm-smmuv3,accel=on requires KVM (QEMU refuses it under TCG)")
    machine = guest_machine(
        image,
        None,
        (),
        accel=accel,
        memory_mb=memory_mb,
        smp=smp,
        firmware="uefi" if arch == "arm64" else "direct",
    )
    cpu = "host" if accel == "kvm" else None
    return machine.with_(cpu=cpu, extra_args=(*machine.extra_args, *topology_args(topology, accel)))


def l2_machine(
    payload_dir: str,
    topology: Topology,
    *,
    accel: str,
    memory_mb: int = 1024,
    kernel: str = "Image",
    initrd: str = "initramfs.cpio",
    firmware: str = "QEMU_EFI.fd",
) -> Machine:
    """L2 of the simulated tier 3: its files are on L1's payload disk, its NIC off PCI."""
    directory = Path(payload_dir)
    arm = isinstance(topology, AccelSmmuTopology)
    return Machine(
        arch="arm64" if arm else "x86_64",
        kernel=directory / kernel,
        initrd=directory / initrd,
        accel="kvm" if accel == "kvm" else "tcg",
        cpu="host" if accel == "kvm" else None,
        memory_mb=memory_mb,
        smp=1,
        append="acpi=force" if arm else "no_timer_check",
        firmware="uefi" if arm else "direct",
        uefi_code=directory / firmware if arm else None,
        devices=(UserNic(),),
        extra_args=tuple(topology_args(topology, accel)),
    )
