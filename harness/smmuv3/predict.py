"""Predict the ID registers a guest reads from QEMU's emulated SMMUv3, given QEMU options.

Reconstructed from QEMU hw/arm/smmuv3.c smmuv3_init_regs() (QEMU >= 9.1, where
`stage=nested` exists; unchanged in 10.0) and, for `accel=on`, smmuv3_accel_idr_override()
plus smmu_validate_property() from the SMMUv3 accel series (hw/arm/smmuv3-accel.c), which is
where the `ril`, `ats`, `oas` and `pasid`/`ssidsize` properties live. Checked against a
measurement on QEMU 10.0.2: IDR3 = 0x1414 with stage=nested.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harness.errors import ConfigError

from .registers import (
    Aidr,
    Idr0,
    Idr1,
    Idr2,
    Idr3,
    Idr4,
    Idr5,
    IdRegs,
    Iidr,
)

QEMU_SIDSIZE = 16
"""SMMU_IDR1_SIDSIZE in hw/arm/smmuv3-internal.h."""
QEMU_CMDQS = 19
"""SMMU_CMDQS: log2 of command-queue entries."""
QEMU_EVENTQS = 19
"""SMMU_EVENTQS: log2 of event-queue entries."""
QEMU_SSIDSIZE_PASID = 16
"""SSIDSIZE QEMU advertises for `pasid=on` (SMMU_IDR1_SSIDSIZE)."""
QEMU_OAS = {44: 4, 48: 5}
"""Values the `oas` property accepts, with their IDR5.OAS encoding (default 44 bits)."""
QEMU_AIDR = 0x1
"""QEMU reports SMMUv3.1; IIDR stays 0 (never written by smmuv3_init_regs)."""

OPTION_DEFAULTS: dict[str, object] = {
    "iommu": "smmuv3",
    "stage": "1",
    "accel": False,
    "ril": True,
    "ats": False,
    "oas": 44,
    "pasid": False,
    "ssidsize": 0,
}
"""The arm-smmuv3 properties modelled here, with QEMU's defaults."""

STAGES = ("1", "2", "nested")


@dataclass(frozen=True)
class QemuSmmuOptions:
    """The arm-smmuv3 properties that shape the ID registers, checked like QEMU does."""

    iommu: str = "smmuv3"
    """smmuv3 (virt machine iommu=smmuv3) or arm-smmuv3 (-device): same registers."""
    stage: str = "1"
    accel: bool = False
    ril: bool = True
    ats: bool = False
    oas: int = 44
    pasid: bool = False
    ssidsize: int = 0

    @classmethod
    def from_mapping(cls, options: Mapping[str, object] | None) -> QemuSmmuOptions:
        """Options from a mapping of property names; ConfigError for unknown or mistyped ones."""
        values = dict(options or {})
        unknown = sorted(set(values) - set(OPTION_DEFAULTS))
        if unknown:
            raise ConfigError(f"arm-smmuv3 option {unknown[0]!r} is not modelled")
        if "stage" in values:
            values["stage"] = str(values["stage"])
        for key, default in OPTION_DEFAULTS.items():
            value = values.setdefault(key, default)
            if type(value) is not type(default):
                raise ConfigError(f"arm-smmuv3 {key}={value!r}: expected {type(default).__name__}")
        opts = cls(
            iommu=str(values["iommu"]),
            stage=str(values["stage"]),
            accel=bool(values["accel"]),
            ril=bool(values["ril"]),
            ats=bool(values["ats"]),
            oas=int(str(values["oas"])),
            pasid=bool(values["pasid"]),
            ssidsize=int(str(values["ssidsize"])),
        )
        opts.validate()
        return opts

    def validate(self) -> None:
        """Mirror smmu_validate_property() and virt's pre-plug check for accel=on."""
        if self.iommu not in ("smmuv3", "arm-smmuv3"):
            raise ConfigError(f"iommu={self.iommu!r}: expected smmuv3 or arm-smmuv3")
        if self.stage not in STAGES:
            raise ConfigError(f"arm-smmuv3 stage={self.stage!r}: QEMU knows {', '.join(STAGES)}")
        if not self.accel:
            if not self.ril:
                raise ConfigError("arm-smmuv3: ril can only be disabled if accel=on")
            if self.ats:
                raise ConfigError("arm-smmuv3: ats can only be enabled if accel=on")
            if self.oas != 44:
                raise ConfigError("arm-smmuv3: OAS can only be set to 44 bits if accel=off")
            if self.pasid or self.ssidsize:
                raise ConfigError("arm-smmuv3: pasid can only be enabled if accel=on")
            return
        if self.stage != "1":
            raise ConfigError("arm-smmuv3: only stage1 is supported with accel=on")
        if self.oas not in QEMU_OAS:
            raise ConfigError("arm-smmuv3: OAS can only be set to 44 or 48 bits")
        if self.pasid and self.ssidsize:
            raise ConfigError("arm-smmuv3: give either pasid or ssidsize, not both")
        if not 0 <= self.ssidsize <= 20:
            raise ConfigError(f"arm-smmuv3: ssidsize={self.ssidsize} outside 0..20")


def predict_id_regs(options: Mapping[str, object] | None = None) -> IdRegs:
    """The decoded ID registers QEMU's arm-smmuv3 presents for `options`.

    `options` keys (all optional): iommu ("smmuv3" for the virt machine option, or
    "arm-smmuv3" for -device; no effect on the registers), stage ("1", "2", "nested";
    default "1", which iommu=smmuv3 keeps unless `-global arm-smmuv3.stage=` changes it),
    accel, ril, ats, oas (44/48), pasid (bool) or ssidsize (0..20). Invalid combinations
    raise ConfigError with the message QEMU would print.
    """
    opts = QemuSmmuOptions.from_mapping(options)
    s2p = opts.stage in ("2", "nested")
    ssidsize = 0
    if opts.accel:
        ssidsize = QEMU_SSIDSIZE_PASID if opts.pasid else opts.ssidsize
    idr0 = Idr0(
        s1p=opts.stage in ("1", "nested"),
        s2p=s2p,
        ttf=2,
        cohacc=True,
        asid16=True,
        vmid16=True,
        ttendian=2,
        stall_model=1,
        term_model=True,
        st_level=1,
        ats=opts.accel and opts.ats,
    )
    idr1 = Idr1(sidsize=QEMU_SIDSIZE, ssidsize=ssidsize, eventqs=QEMU_EVENTQS, cmdqs=QEMU_CMDQS)
    # QEMU sets HAD even for stage=2 (S1P == 0), where the spec says HAD reads 0.
    idr3 = Idr3(had=True, xnx=s2p, ril=opts.ril, bbml=2)
    idr5 = Idr5(oas=QEMU_OAS[opts.oas], gran4k=True, gran16k=True, gran64k=True)
    return IdRegs(idr0, idr1, Idr2(), idr3, Idr4(), idr5, Iidr(), Aidr(arch_minor_rev=QEMU_AIDR))


def predict_idrs(options: Mapping[str, object] | None = None) -> dict[str, int]:
    """Raw register values ("IDR0".."IDR5", "IIDR", "AIDR") QEMU presents for `options`."""
    return predict_id_regs(options).encode()
