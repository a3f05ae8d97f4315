"""The nested-HWPT STE (struct iommu_hwpt_arm_smmuv3) and the kernel vSMMU's verdict on it.

Mirrors arm_vsmmu_alloc_domain_nested() / arm_smmu_validate_vste() and the attach-time
arm_smmu_make_nested_domain_ste() in drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c
(Linux 7.3): which STE words 0-1 fields userspace may set, which errno each mistake gets,
and what the kernel installs in the physical STE.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import EncodeError

from ._bits import mask
from .ste import Eats, S1Dss, S1Fmt, SteConfig

STE0_V = 1 << 0
STE0_CFG = mask(3, 1)
STE0_S1FMT = mask(5, 4)
STE0_S1CTXPTR = mask(51, 6)
STE0_S1CDMAX = mask(63, 59)
STE1_S1DSS = mask(1, 0)
STE1_S1CIR = mask(3, 2)
STE1_S1COR = mask(5, 4)
STE1_S1CSH = mask(7, 6)
STE1_MEV = 1 << 19
STE1_S1STALLD = 1 << 27
STE1_EATS = mask(29, 28)

NESTING_ALLOWED_0 = STE0_V | STE0_CFG | STE0_S1FMT | STE0_S1CTXPTR | STE0_S1CDMAX
"""STRTAB_STE_0_NESTING_ALLOWED."""
NESTING_ALLOWED_1 = STE1_S1DSS | STE1_S1CIR | STE1_S1COR | STE1_S1CSH | STE1_S1STALLD | STE1_EATS
"""STRTAB_STE_1_NESTING_ALLOWED."""

HWPT_DATA_SIZE = 16
"""sizeof(struct iommu_hwpt_arm_smmuv3)."""
IOMMU_HWPT_FAULT_ID_VALID = 1 << 2
"""The one IOMMU_HWPT_ALLOC flag iommufd strips before calling the driver."""

_CONFIGS = {
    "abort": SteConfig.ABORT,
    "bypass": SteConfig.BYPASS,
    "s1": SteConfig.S1_TRANS,
    "translate": SteConfig.S1_TRANS,
}


def build_nested_ste(
    config: str | int = "s1",
    *,
    cd_table: int = 0,
    s1fmt: int = S1Fmt.LINEAR,
    s1cdmax: int = 0,
    s1dss: int = S1Dss.TERMINATE,
    s1cir: int = 0,
    s1cor: int = 0,
    s1csh: int = 0,
    s1stalld: bool = False,
    eats: int = Eats.ABORT,
    valid: bool = True,
) -> bytes:
    """The 16-byte iommu_hwpt_arm_smmuv3 payload, restricted to what the vSMMU accepts.

    `config` is "abort", "bypass", "s1" (alias "translate") or the STE.Config value; EATS
    may only be ABORT or FULL. `valid=False` gives the all-zero "non-valid STE" request.
    """
    if not valid:
        return bytes(HWPT_DATA_SIZE)
    cfg = _CONFIGS.get(config) if isinstance(config, str) else config
    if cfg not in (SteConfig.ABORT, SteConfig.BYPASS, SteConfig.S1_TRANS):
        raise EncodeError("vSTE.Config", f"{config!r} is not abort, bypass or s1 translate")
    if eats not in (Eats.ABORT, Eats.FULL):
        raise EncodeError("vSTE.EATS", f"{eats} is not 0 (abort) or 1 (full ATS)")
    values = (
        ("vSTE.S1ContextPtr", cd_table, STE0_S1CTXPTR, 0, True),
        ("vSTE.S1Fmt", s1fmt, STE0_S1FMT, 0, False),
        ("vSTE.S1CDMax", s1cdmax, STE0_S1CDMAX, 0, False),
        ("vSTE.S1DSS", s1dss, STE1_S1DSS, 1, False),
        ("vSTE.S1CIR", s1cir, STE1_S1CIR, 1, False),
        ("vSTE.S1COR", s1cor, STE1_S1COR, 1, False),
        ("vSTE.S1CSH", s1csh, STE1_S1CSH, 1, False),
        ("vSTE.S1STALLD", int(s1stalld), STE1_S1STALLD, 1, False),
        ("vSTE.EATS", eats, STE1_EATS, 1, False),
    )
    words = [STE0_V | cfg << 1, 0]
    for label, value, field_mask, word, address in values:
        shift = 0 if address else (field_mask & -field_mask).bit_length() - 1
        placed = value if address else value << shift
        if value < 0 or placed & ~field_mask:
            raise EncodeError(label, f"{value:#x} does not fit mask {field_mask:#x}")
        words[word] |= placed
    return b"".join(word.to_bytes(8, "little") for word in words)


@dataclass(frozen=True)
class VsteVerdict:
    """What IOMMU_HWPT_ALLOC (nested, ARM_SMMUV3 data) does with a vSTE, and later attach."""

    errno: int
    reason: str
    ste: tuple[int, int] = (0, 0)
    """Words 0-1 the kernel keeps in the nested domain (zeroed if V == 0, EATS cleared)."""
    enable_ats: bool = False
    """EATS == full ATS on a translating vSTE: attach keeps ATS enabled on the device."""
    installs: str = ""
    """Physical STE attach will install: "abort", "bypass" (S2 only) or "nested"."""

    @property
    def ok(self) -> bool:
        """The allocation succeeds."""
        return self.errno == 0

    @property
    def needs_vdevice(self) -> bool:
        """Attach fails without a vDEVICE for the device (translating vSTE)."""
        return self.installs == "nested"

    def physical_words(self) -> tuple[int, int]:
        """Words 0-1 bits the vSTE contributes to the installed STE (S2 fields come on top).

        For "nested": V | Config=0b111 | the vSTE's word 0 but Config, and word 1 | MEV; the
        kernel also sets EATS from `enable_ats`. Otherwise the words the kernel builds for an
        abort STE or the S2-only STE of the nest parent are not modelled and (0, 0) is returned.
        """
        if self.installs != "nested":
            return (0, 0)
        word0 = STE0_V | SteConfig.NESTED << 1 | (self.ste[0] & ~STE0_CFG)
        return (word0, self.ste[1] | STE1_MEV)


def _words(ste: bytes | bytearray | memoryview | Sequence[int]) -> tuple[int, int] | int:
    """Words 0-1 of a user vSTE, or the errno the kernel's copy from user returns."""
    if isinstance(ste, bytes | bytearray | memoryview):
        raw = bytes(ste)
        if len(raw) != HWPT_DATA_SIZE:
            return errno.EINVAL
        return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")
    words = tuple(ste)
    if len(words) != 2 or not all(isinstance(w, int) and 0 <= w < 1 << 64 for w in words):
        return errno.EINVAL
    return words[0], words[1]


def validate_nested_ste(
    ste: bytes | bytearray | memoryview | Sequence[int], *, flags: int = 0
) -> VsteVerdict:
    """Predict the kernel's verdict on a nested HWPT allocation with this vSTE.

    `ste` is the user data (16 bytes; another length is EINVAL as in
    iommu_copy_struct_from_user) or words 0-1; `flags` are the IOMMU_HWPT_ALLOC flags.
    """
    if flags & ~IOMMU_HWPT_FAULT_ID_VALID:
        return VsteVerdict(errno.EOPNOTSUPP, f"flags {flags:#x}: only FAULT_ID_VALID allowed")
    words = _words(ste)
    if isinstance(words, int):
        return VsteVerdict(words, "user data is not a 16-byte iommu_hwpt_arm_smmuv3")
    ste0, ste1 = words
    if not ste0 & STE0_V:
        return VsteVerdict(0, "V == 0: zeroed, attach installs an abort STE", installs="abort")
    if ste0 & ~NESTING_ALLOWED_0:
        return VsteVerdict(errno.EIO, f"word 0 bits {ste0 & ~NESTING_ALLOWED_0:#x} not allowed")
    if ste1 & ~NESTING_ALLOWED_1:
        return VsteVerdict(errno.EIO, f"word 1 bits {ste1 & ~NESTING_ALLOWED_1:#x} not allowed")
    cfg = (ste0 & STE0_CFG) >> 1
    if cfg not in (SteConfig.ABORT, SteConfig.BYPASS, SteConfig.S1_TRANS):
        return VsteVerdict(errno.EIO, f"Config 0b{cfg:03b} is not abort, bypass or S1")
    eats = (ste1 & STE1_EATS) >> 28
    if eats not in (Eats.ABORT, Eats.FULL):
        return VsteVerdict(errno.EIO, f"EATS 0b{eats:02b}: only abort or full ATS")
    kept = (ste0, ste1 & ~STE1_EATS)
    if cfg == SteConfig.S1_TRANS:
        return VsteVerdict(0, "S1 translate", kept, eats == Eats.FULL, "nested")
    name = "abort" if cfg == SteConfig.ABORT else "bypass"
    return VsteVerdict(0, name, kept, False, name)
