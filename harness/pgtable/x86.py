"""x86-64 4- and 5-level paging as VT-d first-stage translation uses it (VT-d spec 9.7).

Levels are numbered as VT-d and QEMU number them: 1 = PTE (4 KiB), 2 = PDE (2 MiB leaf
with PS), 3 = PDPTE (1 GiB leaf with PS, needs cap FS1GP), 4 = PML4E, 5 = PML5E.

Entries the builder writes follow Linux (generic_pt x86_64 format):

- non-leaf entries are ``P | R/W | U/S | A``. First-stage rights are the AND of R/W and
  U/S over every level, and DMA without a privileged PASID is a user request, so
  non-leaf entries must grant both or every leaf below is unusable; A is preset so the
  IOMMU never has to write it back.
- leaves preset A, and D when writable: the IOMMU (and QEMU's model) otherwise sets them
  atomically in table memory, which a guest-side copy would not see.
- bits 51:HAW are reserved in every entry, bit 7 in PML4E/PML5E, bits 29:13 in a 1 GiB
  leaf and 20:13 in a 2 MiB leaf; bits 62:52 are ignored; bit 63 is XD.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from harness.errors import DecodeError, EncodeError
from harness.pgtable.base import EMPTY, LEAF, TABLE, PageTable
from harness.pgtable.common import Fault, FaultKind, Level, Perms, Translation

P, RW, US, PWT, PCD, A, D, PS, G = (1 << bit for bit in range(9))
PAT_4K = 1 << 7
PAT_LARGE = 1 << 12
XD = 1 << 63
TABLE_BITS = P | RW | US | A
ADDRESS_MASK = ((1 << 52) - 1) & ~0xFFF

# VT-d fault reasons for first-stage translation (as QEMU reports them).
FR_NOT_PRESENT = 0x71
FR_RESERVED = 0x72
FR_NON_CANONICAL = 0x80
FR_PRIVILEGE = 0x81
FR_WRITE = 0x85

_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class X86Attrs:
    """Leaf attributes besides rights; ``dirty=None`` means set D exactly when writable."""

    pwt: bool = False
    pcd: bool = False
    pat: bool = False
    global_page: bool = False
    accessed: bool = True
    dirty: bool | None = None


@dataclass(frozen=True)
class VtdFirstStageConfig:
    """What a scalable-mode PASID entry needs to use these tables (PGTT = 001b).

    ``fsptptr`` goes in PASID-entry bits 191:140 and ``fspm`` in bits 131:130, so qword 2
    of the entry is ``qword2``. 5-level tables need cap FS5LP, 1 GiB leaves cap FS1GP.
    """

    fsptptr: int
    fspm: int
    levels: int
    address_width: int
    uses_1g_pages: bool

    @property
    def qword2(self) -> int:
        """PASID-entry bits 191:128 holding FSPTPTR and FSPM."""
        return self.fsptptr | self.fspm << 2


def x86_geometry(levels: int) -> tuple[Level, ...]:
    """The radix tree of 4- or 5-level paging, root first."""
    if levels not in (4, 5):
        raise EncodeError("levels", f"{levels} is not 4 or 5")
    return tuple(
        Level(number=n, shift=12 + 9 * (n - 1), entries=512, leaf=n <= 3)
        for n in range(levels, 0, -1)
    )


def _reserved_mask(level: int, large: bool, haw: int) -> int:
    mask = ((1 << 52) - 1) & ~((1 << haw) - 1)
    if level >= 4:
        mask |= PS
    elif large and level == 3:
        mask |= ((1 << 30) - 1) & ~((1 << 13) - 1)
    elif large and level == 2:
        mask |= ((1 << 21) - 1) & ~((1 << 13) - 1)
    return mask


def _decode_attrs(entry: int, level: int) -> X86Attrs:
    return X86Attrs(
        pwt=bool(entry & PWT),
        pcd=bool(entry & PCD),
        pat=bool(entry & (PAT_4K if level == 1 else PAT_LARGE)),
        global_page=bool(entry & G),
        accessed=bool(entry & A),
        dirty=bool(entry & D),
    )


def _is_canonical(iova: int, input_bits: int) -> bool:
    upper = iova >> (input_bits - 1)
    return upper == 0 or upper == (1 << (65 - input_bits)) - 1


def walk_x86(
    memory: bytes | bytearray | memoryview,
    base: int,
    root: int,
    iova: int,
    *,
    levels: int = 4,
    haw: int = 48,
    access: Perms | None = None,
) -> Translation[X86Attrs] | Fault:
    """Walk first-stage tables held in ``memory`` (at address ``base``) from ``root``.

    Returns a Fault for anything the IOMMU would fault on; raises DecodeError only when a
    table pointer leads outside ``memory``.
    """
    input_bits = 12 + 9 * levels
    if iova < 0 or iova >> 64 or not _is_canonical(iova, input_bits):
        return Fault(
            iova, levels, FaultKind.INPUT_RANGE, f"{iova:#x} is not canonical", FR_NON_CANONICAL
        )
    table = root
    writable, user, executable = True, True, True
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        address = table + ((iova >> shift) & 511) * 8
        offset = address - base
        if offset < 0 or offset + 8 > len(memory):
            raise DecodeError(
                f"level {level} table",
                f"entry at {address:#x} is outside the memory [{base:#x}, {base + len(memory):#x})",
            )
        entry: int = _U64.unpack_from(memory, offset)[0]
        if not entry & P:
            reason = f"level {level} entry not present"
            return Fault(iova, level, FaultKind.NOT_PRESENT, reason, FR_NOT_PRESENT, entry, address)
        large = level in (2, 3) and bool(entry & PS)
        reserved = entry & _reserved_mask(level, large, haw)
        if reserved:
            reason = f"level {level} entry has reserved bits {reserved:#x} set (HAW {haw})"
            return Fault(iova, level, FaultKind.RESERVED_BIT, reason, FR_RESERVED, entry, address)
        writable = writable and bool(entry & RW)
        user = user and bool(entry & US)
        executable = executable and not entry & XD
        if level == 1 or large:
            size = 1 << shift
            perms = Perms.READ
            perms |= Perms.WRITE if writable else 0
            perms |= Perms.EXEC if executable else 0
            perms |= 0 if user else Perms.PRIV
            translation = Translation(
                iova=iova,
                output=(entry & ADDRESS_MASK & ~(size - 1)) | (iova & (size - 1)),
                page_size=size,
                level=level,
                perms=perms,
                attrs=_decode_attrs(entry, level),
                descriptor=entry,
                descriptor_address=address,
            )
            return _check_access(translation, access)
        table = entry & ADDRESS_MASK
    raise AssertionError("unreachable: level 1 entries are always leaves")


def _check_access(
    translation: Translation[X86Attrs], access: Perms | None
) -> Translation[X86Attrs] | Fault:
    if access is None:
        return translation
    perms, level = translation.perms, translation.level
    denied: tuple[str, int | None] | None = None
    if perms & Perms.PRIV and not access & Perms.PRIV:
        denied = ("user request to a supervisor page (U/S clear)", FR_PRIVILEGE)
    elif access & Perms.WRITE and not perms & Perms.WRITE:
        denied = ("write to a read-only page (R/W clear)", FR_WRITE)
    elif access & Perms.EXEC and not perms & Perms.EXEC:
        denied = ("execute from an XD page", None)
    if denied is None:
        return translation
    reason, code = denied
    return Fault(
        translation.iova,
        level,
        FaultKind.PERMISSION,
        reason,
        code,
        translation.descriptor,
        translation.descriptor_address,
    )


class X86PageTable(PageTable[X86Attrs]):
    """x86-64 4- or 5-level first-stage tables for VT-d, built in a byte buffer."""

    def __init__(
        self, memory: bytearray | int, base: int, *, levels: int = 4, haw: int = 48
    ) -> None:
        if not 32 <= haw <= 52:
            raise EncodeError("haw", f"{haw} is outside 32..52")
        self.paging_levels = levels
        self.haw = haw
        self.input_bits = 12 + 9 * levels
        super().__init__(memory, base, 4096, x86_geometry(levels), haw)

    @property
    def hw_config(self) -> VtdFirstStageConfig:
        """FSPTPTR / FSPM and what capabilities the tables rely on."""
        uses_1g = self._has_leaf(self.root, 0, self.paging_levels - 3)
        return VtdFirstStageConfig(
            fsptptr=self.root,
            fspm=self.paging_levels - 4,
            levels=self.paging_levels,
            address_width=self.haw,
            uses_1g_pages=uses_1g,
        )

    def _has_leaf(self, table: int, depth: int, target_depth: int) -> bool:
        """True if any leaf sits at ``target_depth`` below ``table``."""
        for value in self.tables.read_array(table, 512):
            kind = self._kind(value, depth)
            if depth == target_depth and kind == LEAF:
                return True
            below = depth < target_depth and kind == TABLE
            if below and self._has_leaf(value & ADDRESS_MASK, depth + 1, target_depth):
                return True
        return False

    def walk(self, iova: int, access: Perms | None = None) -> Translation[X86Attrs] | Fault:
        """Translate ``iova`` from the table bytes, as VT-d first stage would."""
        levels, haw = self.paging_levels, self.haw
        return walk_x86(
            self.tables.buffer, self.base, self.root, iova, levels=levels, haw=haw, access=access
        )

    def _kind(self, value: int, depth: int) -> int:
        if not value & P:
            return EMPTY
        level = self.geometry[depth].number
        if level == 1 or (level <= 3 and value & PS):
            return LEAF
        return TABLE

    def _table_entry(self, table: int) -> int:
        return table | TABLE_BITS

    def _table_address(self, value: int) -> int:
        return value & ADDRESS_MASK

    def _leaf_template(self, depth: int, perms: Perms, attrs: X86Attrs | None) -> int:
        if attrs is None:
            attrs = X86Attrs()
        elif not isinstance(attrs, X86Attrs):
            raise EncodeError("attrs", f"expected X86Attrs, got {type(attrs).__name__}")
        level = self.geometry[depth].number
        writable = bool(perms & Perms.WRITE)
        entry = P
        entry |= RW if writable else 0
        entry |= 0 if perms & Perms.PRIV else US
        entry |= PWT if attrs.pwt else 0
        entry |= PCD if attrs.pcd else 0
        entry |= A if attrs.accessed else 0
        entry |= D if (writable if attrs.dirty is None else attrs.dirty) else 0
        entry |= G if attrs.global_page else 0
        entry |= 0 if perms & Perms.EXEC else XD
        if level > 1:
            entry |= PS | (PAT_LARGE if attrs.pat else 0)
        else:
            entry |= PAT_4K if attrs.pat else 0
        return entry

    def _decode_leaf(self, value: int, depth: int) -> tuple[Perms, X86Attrs]:
        perms = Perms.READ
        perms |= Perms.WRITE if value & RW else 0
        perms |= 0 if value & XD else Perms.EXEC
        perms |= 0 if value & US else Perms.PRIV
        attrs = _decode_attrs(value, self.geometry[depth].number)
        return perms, dataclasses.replace(attrs, dirty=None)

    def _check_input(self, iova: int, size: int) -> None:
        last = iova + size - 1
        if iova < 0 or last >> 64 or not _is_canonical(iova, self.input_bits):
            raise EncodeError("iova", f"{iova:#x} is not a canonical {self.input_bits}-bit address")
        if (iova ^ last) >> (self.input_bits - 1) or not _is_canonical(last, self.input_bits):
            raise EncodeError(
                "size",
                f"[{iova:#x}, {last + 1:#x}) leaves the canonical {self.input_bits}-bit range",
            )
