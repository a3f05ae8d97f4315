"""Why the arm-smmu-v3 driver would (not) give userspace a nest parent and a vIOMMU.

Mirrors Linux 7.3: a nest parent needs ARM_SMMU_FEAT_NESTING (IDR0.S1P and IDR0.S2P, no
MMU-600/700 erratum: QEMU's IIDR is 0); a vIOMMU additionally needs IDR3.FWB
(ARM_SMMU_FEAT_S2FWB) or the device's root complex claiming CANWBS in the IORT
(arm_smmu_get_viommu_size()).  The report names each condition and its value so a
refused IOMMU_VIOMMU_ALLOC (EOPNOTSUPP) is explained, not just observed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.firmware.iort import Iort
from harness.smmuv3 import decode_idr0, decode_idr3


@dataclass(frozen=True)
class NestingCapability:
    """The conditions, their values and what the kernel will allow."""

    s1p: bool
    s2p: bool
    fwb: bool
    canwbs: bool | None
    """IORT root complex CANWBS; None without an IORT (device tree boot: no such claim)."""
    rc_memory_flags: tuple[int, ...] = ()
    failed: tuple[str, ...] = field(default_factory=tuple)

    @property
    def nest_parent(self) -> bool:
        """IOMMU_HWPT_ALLOC with NEST_PARENT can succeed."""
        return self.s1p and self.s2p

    @property
    def viommu(self) -> bool:
        """IOMMU_VIOMMU_ALLOC (ARM_SMMUV3) can succeed."""
        return self.nest_parent and (self.fwb or bool(self.canwbs))

    def explain(self) -> str:
        """One line: what is possible and, if not, which conditions failed."""
        if self.viommu:
            how = "IDR3.FWB=1" if self.fwb else "IORT CANWBS=1"
            return f"nest parent and vIOMMU allowed ({how})"
        return "; ".join(self.failed)

    def to_json(self) -> dict[str, object]:
        return {
            "IDR0.S1P": int(self.s1p),
            "IDR0.S2P": int(self.s2p),
            "IDR3.FWB": int(self.fwb),
            "IORT.CANWBS": None if self.canwbs is None else int(self.canwbs),
            "IORT.rc_memory_flags": [f"{flags:#04x}" for flags in self.rc_memory_flags],
            "nest_parent": self.nest_parent,
            "viommu": self.viommu,
            "explanation": self.explain(),
        }


def nesting_capability(idrs: Mapping[str, int], iort: Iort | None) -> NestingCapability:
    """Evaluate the kernel's conditions from raw IDR0/IDR3 and the IORT the guest booted with."""
    idr0 = decode_idr0(idrs["IDR0"])
    idr3 = decode_idr3(idrs["IDR3"])
    rc_flags = tuple(rc.memory_flags or 0 for rc in iort.root_complexes) if iort else ()
    canwbs = iort.canwbs if iort is not None else None
    failed: list[str] = []
    if not (idr0.s1p and idr0.s2p):
        failed.append(
            f"no nesting: IDR0.S1P={int(idr0.s1p)} IDR0.S2P={int(idr0.s2p)} (both stages needed)"
        )
    if not idr3.fwb and not canwbs:
        flags = "/".join(f"{f:#04x}" for f in rc_flags) or "no IORT"
        failed.append(
            f"no vIOMMU: IDR3.FWB=0 and IORT CANWBS={int(bool(canwbs))}"
            f" (root complex memory flags {flags}; CANWBS is bit 2)"
        )
    return NestingCapability(
        s1p=idr0.s1p, s2p=idr0.s2p, fwb=idr3.fwb, canwbs=canwbs, rc_memory_flags=rc_flags,
        failed=tuple(failed),
    )  # fmt: skip
