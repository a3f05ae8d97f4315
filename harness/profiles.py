"""Standard guest configurations: a vIOMMU kind + devices -> a ``Machine`` for an image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.errors import ConfigError
from harness.qemu.description import (
    Device,
    Edu,
    HotplugPort,
    Igb,
    IntelIommu,
    Machine,
    Pvpanic,
    SmmuV3,
    UserNic,
    Viommu,
)

#: the vIOMMU each arch gets when asked for "its" vIOMMU
VIOMMU_FOR_ARCH = {"x86_64": "vtd", "arm64": "smmuv3"}

#: defaults: VT-d in scalable mode with first-stage translation; SMMUv3 with both stages
DEFAULT_VTD = IntelIommu(scalable_mode=True, flts=True, caching_mode=True, aw_bits=48)
DEFAULT_SMMUV3 = SmmuV3(stage="nested")


def make_viommu(kind: str | None, options: dict[str, Any] | None = None) -> Viommu | None:
    """``vtd`` / ``smmuv3`` / ``none`` with field overrides (``{"flts": False}``)."""
    if kind in (None, "none"):
        if options:
            raise ConfigError("vIOMMU options given without a vIOMMU")
        return None
    base: Viommu
    if kind == "vtd":
        base = DEFAULT_VTD
    elif kind == "smmuv3":
        base = DEFAULT_SMMUV3
    else:
        raise ConfigError(f"viommu={kind!r}: expected vtd, smmuv3 or none")
    from dataclasses import fields, replace

    known = {f.name for f in fields(base)}
    for key in options or {}:
        if key not in known:
            raise ConfigError(f"{kind} option {key!r}: unknown (known: {', '.join(sorted(known))})")
    return replace(base, **(options or {}))


def make_devices(names: Sequence[str]) -> tuple[Device, ...]:
    """Devices by name (``edu``, ``edu:mask=0xfffffff``, ``igb``, ``hotplug-port``: an empty
    root port to hot-plug into) plus the SSH NIC and pvpanic."""
    devices: list[Device] = []
    for i, spec in enumerate(names):
        name, _, rest = spec.partition(":")
        if name == "igb":
            if rest:
                raise ConfigError(f"device {spec!r}: igb takes no options")
            devices.append(Igb(id=f"igb{i}", chassis=16 + i))
            continue
        if name == "hotplug-port":
            devices.append(HotplugPort(id=f"hotport{i}", chassis=32 + i))
            continue
        if name != "edu":
            raise ConfigError(f"device {spec!r}: unknown (known: edu, igb, hotplug-port)")
        mask = None
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key != "mask":
                raise ConfigError(f"device {spec!r}: unknown option {key!r} (known: mask)")
            try:
                mask = int(value, 0)
            except ValueError:
                raise ConfigError(f"device {spec!r}: mask {value!r} is not a number") from None
        devices.append(Edu(id=f"edu{i}", dma_mask=mask))
    return (*devices, UserNic(), Pvpanic())


def guest_machine(
    image: Any,
    viommu: Viommu | None,
    devices: Sequence[str] = ("edu",),
    *,
    accel: str = "auto",
    memory_mb: int = 2048,
    smp: int = 2,
    append: str = "",
    firmware: str = "direct",
) -> Machine:
    """The machine for a ``harness.images.GuestImage`` with the given vIOMMU and devices."""
    # console= and panic= come from the machine layer; the image may add more
    image_args = [a for a in image.cmdline if not a.startswith(("console=", "panic="))]
    if firmware == "uefi":
        image_args.append("acpi=force")
    return Machine(
        arch=image.arch,
        kernel=image.kernel,
        initrd=image.initramfs,
        accel=accel,  # type: ignore[arg-type]
        memory_mb=memory_mb,
        smp=smp,
        append=" ".join([*image_args, append]).strip(),
        console=image.console,
        firmware=firmware,  # type: ignore[arg-type]
        uefi_code=image.uefi_firmware if firmware == "uefi" else None,
        viommu=viommu,
        devices=make_devices(devices),
    )
