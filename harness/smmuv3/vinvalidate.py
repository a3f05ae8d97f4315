"""The kernel vSMMU's checks on IOMMU_HWPT_INVALIDATE commands for an ARM_SMMUV3 vIOMMU.

Mirrors arm_vsmmu_validate_user_cmd(), arm_vsmmu_validate_range(),
arm_vsmmu_convert_user_cmd() and the batching of arm_vsmmu_cache_invalidate() in
drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c (Linux 7.3): which opcodes and fields a
guest may use, what the kernel rewrites (vSID -> physical SID, VMID forced to the vIOMMU's,
TLBI_NSNH_ALL turned into TLBI_NH_ALL) and which commands fail with EIO.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ._bits import as_words, mask
from .cmdq import ATC_INV_SIZE_ALL, OPCODES, Command
from .registers import IdRegs

CMDQ_0_OP = mask(7, 0)
CMDQ_0_SSV = 1 << 11
CMDQ_CFGI_0_SSID = mask(31, 12)
CMDQ_CFGI_0_SID = mask(63, 32)
CMDQ_CFGI_1_LEAF = 1 << 0
CMDQ_TLBI_0_NUM = mask(16, 12)
CMDQ_TLBI_0_SCALE = mask(25, 20)
CMDQ_TLBI_0_VMID = mask(47, 32)
CMDQ_TLBI_0_ASID = mask(63, 48)
CMDQ_TLBI_1_LEAF = 1 << 0
CMDQ_TLBI_1_TTL = mask(9, 8)
CMDQ_TLBI_1_TG = mask(11, 10)
CMDQ_TLBI_1_VA_MASK = mask(63, 12)
CMDQ_ATC_0_GLOBAL = 1 << 9
CMDQ_ATC_0_SSID = mask(31, 12)
CMDQ_ATC_0_SID = mask(63, 32)
CMDQ_ATC_1_SIZE = mask(5, 0)
CMDQ_ATC_1_ADDR_MASK = mask(63, 12)
CMDQ_BATCH_ENTRIES = 64
"""BITS_PER_LONG on arm64: commands go to the main cmdq in batches of 63."""

ACCEPTED_OPCODES = tuple(
    OPCODES[name]
    for name in (
        "TLBI_NSNH_ALL",
        "TLBI_NH_VA",
        "TLBI_NH_VAA",
        "TLBI_NH_ALL",
        "TLBI_NH_ASID",
        "ATC_INV",
        "CFGI_CD",
        "CFGI_CD_ALL",
    )
)
"""Opcodes the vSMMU forwards; every other opcode is EIO."""


@dataclass(frozen=True)
class VsmmuContext:
    """The physical SMMU features and vIOMMU state the checks depend on."""

    asid_bits: int = 16
    range_inv: bool = True
    """SMMU_IDR3.RIL (ARM_SMMU_FEAT_RANGE_INV)."""
    ds: bool = False
    """SMMU_IDR5.DS (ARM_SMMU_FEAT_DS)."""
    ats: bool = False
    """SMMU_IDR0.ATS with CONFIG_PCI_ATS (ARM_SMMU_FEAT_ATS)."""
    ssid_bits: int = 0
    """SMMU_IDR1.SSIDSIZE."""
    vmid: int = 0
    """VMID of the nest-parent S2 domain, forced into every TLBI."""
    vsid_to_sid: Mapping[int, int] = field(default_factory=dict)
    """vDEVICE virtual IDs to the physical StreamID (streams[0]) of their device."""

    @classmethod
    def from_id_regs(
        cls, regs: IdRegs, *, vmid: int = 0, vsid_to_sid: Mapping[int, int] | None = None
    ) -> VsmmuContext:
        """Context for the host SMMU whose ID registers hw_info reported."""
        return cls(
            asid_bits=regs.idr0.asid_bits,
            range_inv=regs.idr3.ril,
            ds=regs.idr5.ds,
            ats=regs.idr0.ats,
            ssid_bits=regs.idr1.ssidsize,
            vmid=vmid,
            vsid_to_sid=dict(vsid_to_sid or {}),
        )


@dataclass(frozen=True)
class InvalidationVerdict:
    """The kernel's verdict on one invalidation command."""

    errno: int
    reason: str
    issued: tuple[int, int] | None = None
    """The command as rewritten for the physical command queue, when accepted."""

    @property
    def ok(self) -> bool:
        """The kernel accepts (and issues) the command."""
        return self.errno == 0


def _field(value: int, field_mask: int) -> int:
    return (value & field_mask) >> ((field_mask & -field_mask).bit_length() - 1)


def _place(value: int, field_mask: int) -> int:
    return (value << ((field_mask & -field_mask).bit_length() - 1)) & field_mask


def _range_error(ctx: VsmmuContext, data0: int, data1: int) -> str:
    """arm_vsmmu_validate_range(): why the range fields are reserved, or ""."""
    ranged = bool(data0 & (CMDQ_TLBI_0_NUM | CMDQ_TLBI_0_SCALE))
    ttl = _field(data1, CMDQ_TLBI_1_TTL)
    tg = _field(data1, CMDQ_TLBI_1_TG)
    if not tg:
        return "NUM/SCALE/TTL set while TG == 0" if ranged or ttl else ""
    if tg == 2 and ttl == 1 and not ctx.ds:
        return "TTL 0b01 with a 16KB TG needs SMMU_IDR5.DS"
    if not ranged and not ttl:
        return "TG set with NUM == SCALE == TTL == 0 (reserved combination)"
    return ""


def _allowed(ctx: VsmmuContext, data0: int, data1: int) -> tuple[int, int] | str:
    """Bits the guest may set for this opcode, or why the command is refused."""
    opcode = data0 & CMDQ_0_OP
    allowed0, allowed1 = CMDQ_0_OP, 0
    asid = _place((1 << ctx.asid_bits) - 1, CMDQ_TLBI_0_ASID)
    if opcode == OPCODES["TLBI_NSNH_ALL"]:
        pass
    elif opcode in (OPCODES["TLBI_NH_VA"], OPCODES["TLBI_NH_VAA"]):
        if opcode == OPCODES["TLBI_NH_VA"]:
            allowed0 |= asid
        if ctx.range_inv:
            problem = _range_error(ctx, data0, data1)
            if problem:
                return problem
            allowed0 |= CMDQ_TLBI_0_NUM | CMDQ_TLBI_0_SCALE
            allowed1 |= CMDQ_TLBI_1_TG | CMDQ_TLBI_1_TTL
            if not ctx.ds:
                allowed0 &= ~_place(1 << 5, CMDQ_TLBI_0_SCALE)
        allowed0 |= CMDQ_TLBI_0_VMID
        allowed1 |= CMDQ_TLBI_1_LEAF | CMDQ_TLBI_1_VA_MASK
    elif opcode in (OPCODES["TLBI_NH_ASID"], OPCODES["TLBI_NH_ALL"]):
        if opcode == OPCODES["TLBI_NH_ASID"]:
            allowed0 |= asid
        allowed0 |= CMDQ_TLBI_0_VMID
    elif opcode == OPCODES["ATC_INV"]:
        if not ctx.ats:
            return "ATC_INV without ATS on the SMMU"
        if _field(data1, CMDQ_ATC_1_SIZE) > ATC_INV_SIZE_ALL:
            return f"ATC_INV Size {_field(data1, CMDQ_ATC_1_SIZE)} above {ATC_INV_SIZE_ALL}"
        if ctx.ssid_bits:
            allowed0 |= CMDQ_0_SSV | CMDQ_ATC_0_SSID | CMDQ_ATC_0_GLOBAL
        allowed0 |= CMDQ_ATC_0_SID
        allowed1 |= CMDQ_ATC_1_SIZE | CMDQ_ATC_1_ADDR_MASK
    elif opcode in (OPCODES["CFGI_CD"], OPCODES["CFGI_CD_ALL"]):
        if opcode == OPCODES["CFGI_CD"]:
            if ctx.ssid_bits:
                allowed0 |= CMDQ_CFGI_0_SSID
            allowed1 |= CMDQ_CFGI_1_LEAF
        allowed0 |= CMDQ_CFGI_0_SID
    else:
        return f"opcode {opcode:#04x} not accepted by the vSMMU"
    return allowed0, allowed1


def _words(command: Command | bytes | bytearray | Sequence[int]) -> tuple[int, int]:
    if isinstance(command, Command):
        return command.words()
    data0, data1 = as_words(command, 2, 64, "CMD")
    return data0, data1


def check_vsmmu_invalidation(
    command: Command | bytes | bytearray | Sequence[int], ctx: VsmmuContext | None = None
) -> InvalidationVerdict:
    """Predict what the kernel does with one command of an IOMMU_HWPT_INVALIDATE array."""
    ctx = ctx or VsmmuContext()
    data0, data1 = _words(command)
    allowed = _allowed(ctx, data0, data1)
    if isinstance(allowed, str):
        return InvalidationVerdict(errno.EIO, allowed)
    extra0, extra1 = data0 & ~allowed[0], data1 & ~allowed[1]
    if extra0 or extra1:
        return InvalidationVerdict(
            errno.EIO, f"bits not allowed for this opcode: {extra0:#x} / {extra1:#x}"
        )
    opcode = data0 & CMDQ_0_OP
    if opcode == OPCODES["TLBI_NSNH_ALL"]:
        issued = (OPCODES["TLBI_NH_ALL"] | _place(ctx.vmid, CMDQ_TLBI_0_VMID), 0)
        return InvalidationVerdict(0, "TLBI_NSNH_ALL becomes TLBI_NH_ALL for the VMID", issued)
    if opcode in (OPCODES["ATC_INV"], OPCODES["CFGI_CD"], OPCODES["CFGI_CD_ALL"]):
        vsid = _field(data0, CMDQ_CFGI_0_SID)
        sid = ctx.vsid_to_sid.get(vsid)
        if sid is None:
            return InvalidationVerdict(errno.EIO, f"vSID {vsid:#x} has no vDEVICE")
        issued = ((data0 & ~CMDQ_CFGI_0_SID) | _place(sid, CMDQ_CFGI_0_SID), data1)
        return InvalidationVerdict(0, f"vSID {vsid:#x} -> SID {sid:#x}", issued)
    issued = ((data0 & ~CMDQ_TLBI_0_VMID) | _place(ctx.vmid, CMDQ_TLBI_0_VMID), data1)
    return InvalidationVerdict(0, f"VMID forced to {ctx.vmid}", issued)


@dataclass(frozen=True)
class BatchVerdict:
    """What IOMMU_HWPT_INVALIDATE does with a whole array of commands."""

    errno: int
    entry_num: int
    """Value written back to entry_num: commands handled before the failing one."""
    issued: tuple[tuple[int, int], ...]
    """Commands that reached the physical queue (whole batches of 63, then the rest)."""
    verdicts: tuple[InvalidationVerdict, ...]


def check_vsmmu_invalidation_array(
    commands: Iterable[Command | bytes | bytearray | Sequence[int]],
    ctx: VsmmuContext | None = None,
) -> BatchVerdict:
    """Predict entry_num, errno and the issued commands for an invalidation array.

    The kernel stops at the first refused command; commands converted since the last
    issued batch are then not issued, yet still count in entry_num.
    """
    ctx = ctx or VsmmuContext()
    verdicts: list[InvalidationVerdict] = []
    issued: list[tuple[int, int]] = []
    pending: list[tuple[int, int]] = []
    items = list(commands)
    for index, command in enumerate(items):
        verdict = check_vsmmu_invalidation(command, ctx)
        verdicts.append(verdict)
        if not verdict.ok:
            return BatchVerdict(verdict.errno, index, tuple(issued), tuple(verdicts))
        assert verdict.issued is not None
        pending.append(verdict.issued)
        if index + 1 == len(items) or len(pending) == CMDQ_BATCH_ENTRIES - 1:
            issued.extend(pending)
            pending.clear()
    return BatchVerdict(0, len(items), tuple(issued), tuple(verdicts))
