"""Declarative bit layouts for VT-d structures: pack/unpack little-endian qwords with checks.

A layout names every defined field of a structure; every other bit is reserved. Unpacking
rejects reserved bits that are set (naming them by their absolute spec bit numbers, e.g.
``PasidEntry.RSVD[75:74]``) and fixed bits (descriptor types) that differ. Packing rejects
values that do not fit their field. Field values are plain ``int`` / ``bool``; an
"in place" field (an address such as ``FSPTPTR``) holds the bits at their own position,
so a 4 KiB-aligned pointer is stored as the address itself.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from harness.errors import DecodeError, EncodeError, HarnessError

U64 = (1 << 64) - 1

ErrorType = Callable[[str, str], HarnessError]
"""``DecodeError`` or ``EncodeError``: semantic checks raise whichever the caller asks for."""


@dataclass(frozen=True)
class Bits:
    """One field: ``attr`` on the Python object, ``name`` as the spec spells it."""

    attr: str
    name: str
    word: int
    lo: int
    hi: int
    in_place: bool = False

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lo

    @property
    def is_flag(self) -> bool:
        return self.width == 1 and not self.in_place


def bit(attr: str, name: str, word: int, pos: int) -> Bits:
    """A one-bit flag field."""
    return Bits(attr, name, word, pos, pos)


def runs(mask: int) -> list[tuple[int, int]]:
    """Contiguous runs of set bits in ``mask`` as ``(hi, lo)`` pairs, lowest first."""
    out: list[tuple[int, int]] = []
    pos = 0
    while mask >> pos:
        if (mask >> pos) & 1:
            lo = pos
            while (mask >> pos) & 1:
                pos += 1
            out.append((pos - 1, lo))
        else:
            pos += 1
    return out


def describe_bits(word: int, mask: int) -> str:
    """Spec-style absolute bit ranges of ``mask`` in qword ``word``: ``"75:74,80"``."""
    base = 64 * word
    parts = []
    for hi, lo in runs(mask):
        parts.append(f"{base + hi}" if hi == lo else f"{base + hi}:{base + lo}")
    return ",".join(parts)


class Layout:
    """The bit layout of one structure of ``words`` qwords."""

    def __init__(
        self,
        struct_name: str,
        words: int,
        fields: Sequence[Bits],
        fixed: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        self.struct_name = struct_name
        self.words = words
        self.fields = tuple(fields)
        self.fixed = dict(fixed or {})
        used = [0] * words
        for f in self.fields:
            if used[f.word] & f.mask:
                raise ValueError(f"{struct_name}: field {f.name} overlaps another field")
            used[f.word] |= f.mask
        for word, (mask, value) in self.fixed.items():
            if used[word] & mask or value & ~mask:
                raise ValueError(f"{struct_name}: bad fixed bits in qword {word}")
            used[word] |= mask
        self.reserved = [~u & U64 for u in used]

    def unpack(self, words: Sequence[int], *, keep_reserved: bool = False) -> dict[str, Any]:
        """Field values of ``words``; reserved bits go to key ``reserved`` or raise."""
        out: dict[str, Any] = {}
        for index, (mask, value) in self.fixed.items():
            if words[index] & mask != value:
                raise DecodeError(
                    f"{self.struct_name}.Type",
                    f"expected 0x{value:x} in bits {describe_bits(index, mask)}, "
                    f"got 0x{words[index] & mask:x}",
                )
        reserved = 0
        for index, word in enumerate(words):
            extra = word & self.reserved[index]
            if not extra:
                continue
            if keep_reserved:
                reserved |= extra << (64 * index)
                continue
            raise DecodeError(
                f"{self.struct_name}.RSVD[{describe_bits(index, extra)}]",
                f"reserved bits set (must be zero): 0x{extra:016x} in qword {index}",
            )
        for f in self.fields:
            raw = words[f.word] & f.mask
            if f.in_place:
                out[f.attr] = raw
            elif f.is_flag:
                out[f.attr] = bool(raw)
            else:
                out[f.attr] = raw >> f.lo
        if keep_reserved:
            out["reserved"] = reserved
        return out

    def pack(self, values: Mapping[str, Any], *, reserved: int = 0) -> list[int]:
        """Qwords holding ``values``; a value that does not fit raises ``EncodeError``."""
        words = [0] * self.words
        for index, (_mask, value) in self.fixed.items():
            words[index] |= value
        for f in self.fields:
            words[f.word] |= self._place(f, values[f.attr])
        for index in range(self.words):
            part = (reserved >> (64 * index)) & U64
            if part & ~self.reserved[index]:
                raise EncodeError(
                    f"{self.struct_name}.reserved",
                    f"0x{part:x} overlaps defined fields (bits "
                    f"{describe_bits(index, part & ~self.reserved[index])})",
                )
            words[index] |= part
        if reserved >> (64 * self.words):
            raise EncodeError(f"{self.struct_name}.reserved", "wider than the structure")
        return words

    def _place(self, f: Bits, value: Any) -> int:
        where = f"{self.struct_name}.{f.name}"
        if f.is_flag:
            if not isinstance(value, int) or value not in (0, 1):
                raise EncodeError(where, f"expected a bool, got {value!r}")
            return int(value) << f.lo
        if not isinstance(value, int) or isinstance(value, bool):
            raise EncodeError(where, f"expected an int, got {value!r}")
        if f.in_place:
            if value < 0 or value > U64:
                raise EncodeError(where, f"0x{value:x} is not a 64-bit value")
            if value & ((1 << f.lo) - 1):
                raise EncodeError(where, f"0x{value:x} is not aligned to {1 << f.lo} bytes")
            if value & ~f.mask:
                raise EncodeError(where, f"0x{value:x} has bits above bit {f.hi} set")
            return value
        if value < 0 or value >> f.width:
            raise EncodeError(where, f"{value} does not fit in {f.width} bits")
        return value << f.lo


def words_from_bytes(struct_name: str, data: object, sizes: Sequence[int]) -> list[int]:
    """Little-endian qwords of ``data``, whose length must be one of ``sizes`` bytes."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(struct_name, f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) not in sizes:
        want = " or ".join(str(s) for s in sizes)
        raise DecodeError(struct_name, f"expected {want} bytes, got {len(raw)}")
    return list(struct.unpack(f"<{len(raw) // 8}Q", raw))


def bytes_from_words(words: Sequence[int]) -> bytes:
    """Little-endian bytes of ``words``."""
    return struct.pack(f"<{len(words)}Q", *words)


def check_u64(struct_name: str, value: object) -> int:
    """``value`` as a 64-bit register value, or ``DecodeError``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(struct_name, f"expected an int, got {type(value).__name__}")
    if value < 0 or value > U64:
        raise DecodeError(struct_name, f"{value:#x} is not a 64-bit value")
    return value


def sid_parts(sid: int) -> tuple[int, int, int]:
    """PCI bus, device and function of a 16-bit requester / source ID."""
    return sid >> 8, (sid >> 3) & 0x1F, sid & 0x7


class RequesterId:
    """Mixin: the PCI bus, device and function of a record's 16-bit ``sid``."""

    sid: int

    @property
    def bus(self) -> int:
        return sid_parts(self.sid)[0]

    @property
    def dev(self) -> int:
        return sid_parts(self.sid)[1]

    @property
    def fn(self) -> int:
        return sid_parts(self.sid)[2]


def format_bdf(sid: int, segment: int = 0) -> str:
    """``0000:00:03.0`` for a source ID, the way the kernel prints it."""
    bus, dev, fn = sid_parts(sid)
    return f"{segment:04x}:{bus:02x}:{dev:02x}.{fn}"


class Packed:
    """Mixin for frozen dataclasses laid out by ``LAYOUT``: bytes in, bytes out."""

    LAYOUT: ClassVar[Layout]

    def _values(self) -> dict[str, Any]:
        """Raw field values keyed by layout attribute."""
        return {f.attr: getattr(self, f.attr) for f in self.LAYOUT.fields}

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> Self:
        """The object for raw field values (override when attributes differ from fields)."""
        return cls(**values)

    def _check(self, error: ErrorType) -> None:
        """Semantic checks beyond field widths; raise ``error(field, problem)``."""

    @classmethod
    def from_words(cls, words: Sequence[int]) -> Self:
        """Decode qwords; ``DecodeError`` names the first bad field."""
        obj = cls._from_values(cls.LAYOUT.unpack(words))
        obj._check(DecodeError)
        return obj

    def to_words(self) -> list[int]:
        """Encode to qwords; ``EncodeError`` names the first bad field."""
        words = self.LAYOUT.pack(self._values())
        self._check(EncodeError)
        return words

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode exactly ``8 * LAYOUT.words`` little-endian bytes."""
        return cls.from_words(
            words_from_bytes(cls.LAYOUT.struct_name, data, (8 * cls.LAYOUT.words,))
        )

    def encode(self) -> bytes:
        """The structure as little-endian bytes, as it sits in memory."""
        return bytes_from_words(self.to_words())
