"""Predict the CAP/ECAP registers a guest sees from QEMU 10.0.2 ``intel-iommu`` options.

A transcription of QEMU 10.0.2's ``vtd_cap_init`` / ``vtd_decide_config`` / ``vtd_realize``
(hw/i386/intel_iommu.c) and ``x86_iommu_realize`` (hw/i386/x86-iommu.c), read from QEMU's
source and checked against registers read from a paused QEMU 10.0.2 (TCG) for 24 option
sets (see tests/unit/test_vtd_predict.py). Invalid combinations raise ``ConfigError`` the
way QEMU refuses to start, naming the option.

Keys are the device's property names (``aw-bits``, ``x-scalable-mode``, ...). Two machine
keys matter for interrupt remapping: ``accel`` (``tcg``, the default, or ``kvm``) and
``kernel-irqchip`` (``on``, ``split``, ``off``; q35's default under KVM is ``on``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.errors import ConfigError
from harness.vtd.registers import Cap, Ecap

QEMU_VERSION = "10.0.2"

_BOOL_OPTIONS = {
    "x-scalable-mode": False,
    "x-flts": False,
    "x-pasid-mode": False,
    "caching-mode": False,
    "device-iotlb": False,
    "snoop-control": False,
    "dma-drain": True,
    "dma-translation": True,
    "pt": True,
    "fs1gp": True,
    "x-buggy-eim": False,
    "stale-tm": False,
}
_AUTO_OPTIONS = ("intremap", "eim")
_OTHER_OPTIONS = ("aw-bits", "version", "accel", "kernel-irqchip")
KNOWN_OPTIONS = frozenset((*_BOOL_OPTIONS, *_AUTO_OPTIONS, *_OTHER_OPTIONS))
"""Every key ``predict_registers`` accepts."""

_TRUE = {"on", "true", "yes", "y"}
_FALSE = {"off", "false", "no", "n"}

# Constants of QEMU 10.0.2's hw/i386/intel_iommu_internal.h.
_FRCD_REG_OFFSET = 0x220
_FRCD_REG_NR = 1
_IOTLB_REG_OFFSET = 0xF0
_DOMAIN_ID_SHIFT = 16
_MAMV = 18
_ALLOWED_AW_BITS = (39, 48)
_DEFAULT_AW_BITS = 48


@dataclass(frozen=True)
class IntelIommuConfig:
    """The resolved device configuration (after QEMU's auto choices)."""

    aw_bits: int
    scalable_mode: bool
    flts: bool
    pasid: bool
    caching_mode: bool
    device_iotlb: bool
    snoop_control: bool
    dma_drain: bool
    dma_translation: bool
    pt: bool
    fs1gp: bool
    intremap: bool
    eim: bool


def _bool(options: Mapping[str, object], name: str) -> bool:
    value = options.get(name, _BOOL_OPTIONS[name])
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"intel-iommu option '{name}': expected on/off, got {value!r}")


def _on_off_auto(options: Mapping[str, object], name: str) -> bool | None:
    value = options.get(name, "auto")
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.lower()
        if low == "auto":
            return None
        if low in _TRUE | _FALSE:
            return low in _TRUE
    raise ConfigError(f"intel-iommu option '{name}': expected on/off/auto, got {value!r}")


def _aw_bits(options: Mapping[str, object]) -> int:
    value = options.get("aw-bits", _DEFAULT_AW_BITS)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise ConfigError(f"intel-iommu option 'aw-bits': expected an integer, got {value!r}")
    return value


def _machine(options: Mapping[str, object]) -> tuple[bool, str]:
    accel = options.get("accel", "tcg")
    if accel not in ("tcg", "kvm"):
        raise ConfigError(f"machine option 'accel': expected tcg or kvm, got {accel!r}")
    irqchip = options.get("kernel-irqchip", "on")
    if irqchip not in ("on", "off", "split"):
        raise ConfigError(
            f"machine option 'kernel-irqchip': expected on, off or split, got {irqchip!r}"
        )
    return accel == "kvm", str(irqchip)


#: QEMU 11's names for the same properties (same meaning; ``pasid-bits`` N > 0 is
#: ``x-pasid-mode=on``, which gives 20-bit PASIDs)
QEMU11_NAMES = {"scalable-mode": "x-scalable-mode", "fsts": "x-flts", "pasid-bits": "x-pasid-mode"}


def resolve_config(options: Mapping[str, object]) -> IntelIommuConfig:
    """Validate ``options`` as QEMU 10.0.2 does and resolve its ``auto`` choices."""
    if "pasid-bits" in options and options["pasid-bits"] not in (0, 20):
        raise ConfigError(
            f"intel-iommu option 'pasid-bits': {options['pasid-bits']!r} (predicted: 0 or 20)"
        )
    options = {
        QEMU11_NAMES.get(k, k): bool(v) if k == "pasid-bits" else v for k, v in options.items()
    }
    unknown = sorted(set(options) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError(f"intel-iommu option '{unknown[0]}': not a QEMU 10.0.2 property")
    kvm, irqchip = _machine(options)
    in_kernel = kvm and irqchip in ("on", "split")
    irq_all_kernel = kvm and irqchip == "on"
    flags = {name: _bool(options, name) for name in _BOOL_OPTIONS}

    # x86_iommu_realize
    intremap = _on_off_auto(options, "intremap")
    if intremap is None:
        intremap = not irq_all_kernel
    if intremap and irq_all_kernel:
        raise ConfigError(
            "intel-iommu option 'intremap': interrupt remapping cannot work with "
            "kernel-irqchip=on, use split or off"
        )
    # vtd_realize
    if flags["x-pasid-mode"] and flags["device-iotlb"]:
        raise ConfigError(
            "intel-iommu option 'device-iotlb': PASID based device IOTLB is not supported "
            "(with x-pasid-mode=on)"
        )
    # vtd_decide_config
    eim = _on_off_auto(options, "eim")
    if eim and not intremap:
        raise ConfigError("intel-iommu option 'eim': eim=on cannot be selected without intremap=on")
    if eim is None:
        eim = (in_kernel or flags["x-buggy-eim"]) and intremap
    if flags["x-flts"] and not flags["x-scalable-mode"]:
        raise ConfigError("intel-iommu option 'x-flts': x-flts is only available in scalable mode")
    aw_bits = _aw_bits(options)
    if not flags["x-flts"] and aw_bits not in _ALLOWED_AW_BITS:
        mode = "Scalable mode(flts=off)" if flags["x-scalable-mode"] else "Legacy mode"
        raise ConfigError(
            f"intel-iommu option 'aw-bits': {mode}: supported values are 39, 48, got {aw_bits}"
        )
    if flags["x-flts"] and aw_bits != 48:
        raise ConfigError(
            f"intel-iommu option 'aw-bits': with x-flts=on the supported value is 48, got {aw_bits}"
        )
    if flags["x-scalable-mode"] and not flags["dma-drain"]:
        raise ConfigError("intel-iommu option 'dma-drain': scalable mode needs dma-drain=on")
    if flags["x-pasid-mode"] and not flags["x-scalable-mode"]:
        raise ConfigError(
            "intel-iommu option 'x-pasid-mode': x-pasid-mode needs x-scalable-mode=on"
        )
    return IntelIommuConfig(
        aw_bits=aw_bits,
        scalable_mode=flags["x-scalable-mode"],
        flts=flags["x-flts"],
        pasid=flags["x-pasid-mode"],
        caching_mode=flags["caching-mode"],
        device_iotlb=flags["device-iotlb"],
        snoop_control=flags["snoop-control"],
        dma_drain=flags["dma-drain"],
        dma_translation=flags["dma-translation"],
        pt=flags["pt"],
        fs1gp=flags["fs1gp"],
        intremap=intremap,
        eim=bool(eim),
    )


#: the first QEMU release seen to set CAP.ESRTPS: its SRTP handler resets every cache, so the
#: guest need not invalidate after Set Root Table Pointer (absent in 10.0.2, set in 11.1.3;
#: the release in between that added it was not pinned down)
ESRTPS_SINCE = (11, 0, 0)


def registers_for(
    config: IntelIommuConfig, qemu_version: tuple[int, int, int] = (10, 0, 2)
) -> tuple[Cap, Ecap]:
    """CAP and ECAP as ``vtd_cap_init`` builds them for ``config`` (QEMU 10.0.2's code,
    plus what later releases changed: ``ESRTPS_SINCE``)."""
    sagaw = 0
    if config.dma_translation:
        sagaw |= 0b0010 if config.aw_bits >= 39 else 0
        sagaw |= 0b0100 if config.aw_bits >= 48 else 0
    cap = Cap(
        nd=((_DOMAIN_ID_SHIFT - 4) // 2) & 7,
        cm=config.caching_mode,
        sagaw=sagaw,
        mgaw=(config.aw_bits - 1) & 0x3F,
        fro=_FRCD_REG_OFFSET >> 4,
        sllps=0b0011,
        psi=True,
        nfr=_FRCD_REG_NR - 1,
        mamv=_MAMV,
        dwd=config.dma_drain,
        drd=config.dma_drain,
        fs1gp=config.flts and config.fs1gp,
        esrtps=qemu_version >= ESRTPS_SINCE,
    )
    ecap = Ecap(
        qi=True,
        iro=_IOTLB_REG_OFFSET >> 4,
        ir=config.intremap,
        mhmv=0xF if config.intremap else 0,
        eim=config.intremap and config.eim,
        dt=config.device_iotlb,
        pt=config.pt,
        smts=config.scalable_mode,
        fsts=config.flts,
        srs=config.scalable_mode and not config.flts,
        ssts=config.scalable_mode and not config.flts,
        sc=config.snoop_control,
        pasid=config.pasid,
    )
    return cap, ecap


def predict_registers(
    options: Mapping[str, object], qemu_version: tuple[int, int, int] = (10, 0, 2)
) -> tuple[Cap, Ecap]:
    """CAP and ECAP a guest reads for ``-device intel-iommu,<options>`` on that QEMU."""
    return registers_for(resolve_config(options), qemu_version)


def predict(options: Mapping[str, object]) -> dict[str, int]:
    """Predicted register fields by spec name, prefixed ``CAP.`` / ``ECAP.``."""
    cap, ecap = predict_registers(options)
    out = {f"CAP.{k}": v for k, v in cap.fields().items()}
    out.update({f"ECAP.{k}": v for k, v in ecap.fields().items()})
    return out
