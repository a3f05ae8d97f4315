"""CD tables: linear and 2-level (L1CD + leaf tables), laid out in memory and walked by SSID.

The layout rules are the STE.S1Fmt / S1CDMax ones of SMMUv3 section 5.2 and the L1CD format
of section 5.3; the walk is the one the SMMU performs for a SubstreamID.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from harness.errors import DecodeError, EncodeError

from ._bits import Field, Layout, Packed, WordsLike
from .cd import Cd, decode_cd
from .ste import S1Fmt, Ste

CD_SIZE = 64
L1CD_SIZE = 8
LEAF_SPLIT = {S1Fmt.L2_4K: 6, S1Fmt.L2_64K: 10}
"""log2 of CDs per leaf table for each 2-level S1Fmt."""

L1CD_LAYOUT = Layout(
    "L1CD", 1, (Field("v", "V", 0, 0, 0), Field("l2ptr", "L2Ptr", 0, 55, 12, True))
)


@dataclass(frozen=True)
class L1Cd(Packed):
    """Level 1 CD descriptor: valid bit and pointer to a leaf table of CDs."""

    LAYOUT: ClassVar[Layout] = L1CD_LAYOUT
    v: bool = False
    l2ptr: int = 0

    def encode(self) -> bytes:
        """The 8-byte little-endian descriptor."""
        return L1CD_LAYOUT.to_bytes(self.to_words())


def decode_l1cd(data: WordsLike) -> L1Cd:
    """Decode an 8-byte L1CD; DecodeError for RES0 bits."""
    return L1Cd(**L1CD_LAYOUT.unpack(L1CD_LAYOUT.words(data)))


class MemoryReader(Protocol):
    """Anything a table walk can read guest memory through."""

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at `address`; DecodeError if not all of them are present."""
        ...


@dataclass
class SparseMemory:
    """Blocks of bytes at addresses: what a builder lays out and a walker reads."""

    blocks: dict[int, bytes] = field(default_factory=dict)

    def write(self, address: int, data: bytes) -> None:
        """Store `data` at `address`, replacing bytes of an existing block it falls inside."""
        for start, block in self.blocks.items():
            if start <= address and address + len(data) <= start + len(block):
                offset = address - start
                self.blocks[start] = block[:offset] + data + block[offset + len(data) :]
                return
        self.blocks[address] = bytes(data)

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at `address`; DecodeError if they are not inside one block."""
        for start, block in self.blocks.items():
            if start <= address and address + size <= start + len(block):
                return block[address - start : address - start + size]
        raise DecodeError("memory", f"no data for {size} bytes at {address:#x}")

    def flatten(self) -> tuple[int, bytes]:
        """(lowest address, bytes up to the highest), gaps zero-filled."""
        if not self.blocks:
            return 0, b""
        low = min(self.blocks)
        high = max(start + len(block) for start, block in self.blocks.items())
        image = bytearray(high - low)
        for start, block in self.blocks.items():
            image[start - low : start - low + len(block)] = block
        return low, bytes(image)


@dataclass(frozen=True)
class CdTable:
    """A CD table laid out in memory, with the STE fields that describe it."""

    base: int
    s1fmt: int
    s1cdmax: int
    memory: SparseMemory

    def lookup(self, ssid: int) -> Cd:
        """The CD the SMMU uses for `ssid`."""
        return lookup_cd(
            self.memory, base=self.base, s1fmt=self.s1fmt, s1cdmax=self.s1cdmax, ssid=ssid
        )


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def l1_table_size(s1fmt: int, s1cdmax: int) -> int:
    """Bytes of the L1CD table for a 2-level format."""
    split = LEAF_SPLIT[S1Fmt(s1fmt)]
    return L1CD_SIZE << max(0, s1cdmax - split)


def build_cd_table(
    cds: Mapping[int, Cd],
    *,
    base: int,
    s1cdmax: int,
    s1fmt: int = S1Fmt.LINEAR,
    l2_base: int | None = None,
) -> CdTable:
    """Lay out `cds` (by SSID) as the table an STE with these S1* fields describes.

    Linear: 2^S1CDMax CDs at `base`, aligned to the table size. 2-level: an L1CD table at
    `base` (aligned to its size, at least 64 bytes) and one 4KB or 64KB leaf table per L1
    slot that holds a CD, placed from `l2_base` (default: right after the L1 table, aligned).
    Missing SSIDs are invalid (all-zero) CDs; L1 slots without CDs are invalid L1CDs.
    """
    if not 0 <= s1cdmax <= 20:
        raise EncodeError("STE.S1CDMax", f"{s1cdmax} outside 0..20")
    if s1fmt not in S1Fmt.__members__.values():
        raise EncodeError("STE.S1Fmt", f"reserved value {s1fmt}")
    for ssid in cds:
        if not 0 <= ssid < 1 << s1cdmax:
            raise EncodeError("SSID", f"{ssid:#x} outside 0..2^S1CDMax-1 ({s1cdmax})")
    memory = SparseMemory()
    if s1cdmax == 0 or s1fmt == S1Fmt.LINEAR:
        size = CD_SIZE << s1cdmax
        if base % size:
            raise EncodeError("S1ContextPtr", f"{base:#x} not aligned to the table size {size:#x}")
        table = bytearray(size)
        for ssid, cd in cds.items():
            table[ssid * CD_SIZE : (ssid + 1) * CD_SIZE] = cd.encode()
        memory.write(base, bytes(table))
        return CdTable(base, S1Fmt.LINEAR if s1cdmax == 0 else s1fmt, s1cdmax, memory)
    split = LEAF_SPLIT[S1Fmt(s1fmt)]
    leaf_size = CD_SIZE << split
    l1_size = l1_table_size(s1fmt, s1cdmax)
    if base % max(l1_size, 64):
        raise EncodeError("S1ContextPtr", f"{base:#x} not aligned to {max(l1_size, 64):#x}")
    next_leaf = _align_up(base + l1_size, leaf_size) if l2_base is None else l2_base
    if next_leaf % leaf_size:
        raise EncodeError("L1CD.L2Ptr", f"{next_leaf:#x} not aligned to {leaf_size:#x}")
    l1 = bytearray(l1_size)
    leaves: dict[int, bytearray] = {}
    for ssid in sorted(cds):
        leaf = leaves.setdefault(ssid >> split, bytearray(leaf_size))
        index = ssid & ((1 << split) - 1)
        leaf[index * CD_SIZE : (index + 1) * CD_SIZE] = cds[ssid].encode()
    for l1_index, leaf in sorted(leaves.items()):
        l1[l1_index * L1CD_SIZE : (l1_index + 1) * L1CD_SIZE] = L1Cd(True, next_leaf).encode()
        memory.write(next_leaf, bytes(leaf))
        next_leaf += leaf_size
    memory.write(base, bytes(l1))
    return CdTable(base, s1fmt, s1cdmax, memory)


def lookup_cd(memory: MemoryReader, *, base: int, s1fmt: int, s1cdmax: int, ssid: int) -> Cd:
    """Walk a CD table for `ssid` as the SMMU does; DecodeError where it would fault.

    An SSID beyond 2^S1CDMax or an invalid L1CD is C_BAD_SUBSTREAMID, a read outside the
    memory F_CD_FETCH; the field named in the error says which.
    """
    if not 0 <= s1cdmax < 32:
        raise DecodeError("STE.S1CDMax", f"{s1cdmax}: not a 5-bit field value")
    if s1fmt not in (0, 1, 2, 3):
        raise DecodeError("STE.S1Fmt", f"{s1fmt}: not a 2-bit field value")
    if not 0 <= ssid < 1 << s1cdmax:
        raise DecodeError("SSID", f"{ssid:#x} >= 2^S1CDMax ({s1cdmax}): C_BAD_SUBSTREAMID")
    if s1cdmax == 0 or s1fmt == S1Fmt.LINEAR or s1fmt == 3:
        return decode_cd(memory.read(base + ssid * CD_SIZE, CD_SIZE))
    split = LEAF_SPLIT[S1Fmt(s1fmt)]
    l1_index = ssid >> split
    l1cd = decode_l1cd(memory.read(base + l1_index * L1CD_SIZE, L1CD_SIZE))
    if not l1cd.v:
        raise DecodeError(
            "L1CD.V", f"L1CD {l1_index} for SSID {ssid:#x} invalid: C_BAD_SUBSTREAMID"
        )
    if s1fmt == S1Fmt.L2_64K and l1cd.l2ptr & 0xF000:
        raise DecodeError("L1CD.L2Ptr", f"{l1cd.l2ptr:#x}: bits [15:12] are RES0 for 64KB leaves")
    index = ssid & ((1 << split) - 1)
    return decode_cd(memory.read(l1cd.l2ptr + index * CD_SIZE, CD_SIZE))


def lookup_cd_for_ste(memory: MemoryReader, ste: Ste, ssid: int | None) -> Cd:
    """The CD a transaction with `ssid` (None: no SubstreamID) uses through a stage 1 STE.

    Applies S1DSS for transactions without a SubstreamID when substreams are enabled.
    """
    if not ste.stage1:
        raise DecodeError("STE.Config", f"{ste.config_name}: stage 1 does not translate")
    if ste.s1cdmax == 0:
        if ssid is not None:
            raise DecodeError("SSID", "substreams disabled (S1CDMax == 0): C_BAD_SUBSTREAMID")
        ssid = 0
    elif ssid is None:
        if ste.s1dss != 2:
            raise DecodeError("STE.S1DSS", f"{ste.s1dss}: no CD for transactions without SSID")
        ssid = 0
    elif ssid == 0 and ste.s1dss == 2:
        raise DecodeError("SSID", "SSID 0 is reserved by S1DSS == SSID0: F_STREAM_DISABLED")
    return lookup_cd(
        memory, base=ste.s1_context_ptr, s1fmt=ste.s1fmt, s1cdmax=ste.s1cdmax, ssid=ssid
    )
