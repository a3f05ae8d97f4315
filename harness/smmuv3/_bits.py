"""Bit-field layouts shared by the SMMUv3 formats: one table of fields packs and unpacks words."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import DecodeError, EncodeError

WordsLike = bytes | bytearray | memoryview | Sequence[int]


def mask(msb: int, lsb: int) -> int:
    """Mask of bits [msb:lsb] (GENMASK)."""
    return ((1 << (msb - lsb + 1)) - 1) << lsb


@dataclass(frozen=True)
class Field:
    """One named field at bits [msb:lsb] of word `word`.

    An `address` field keeps its value in place (bits below `lsb` are zero) instead of being
    shifted down, the way the kernel's *_MASK address fields are used.
    """

    name: str
    label: str
    word: int
    msb: int
    lsb: int
    address: bool = False

    @property
    def width(self) -> int:
        """Number of bits in the field."""
        return self.msb - self.lsb + 1

    @property
    def mask(self) -> int:
        """Mask of the field within its word."""
        return mask(self.msb, self.lsb)

    @property
    def is_flag(self) -> bool:
        """True for a one-bit field, exposed as a bool."""
        return self.width == 1 and not self.address

    def extract(self, word: int) -> int | bool:
        """Field value taken from its word."""
        if self.address:
            return word & self.mask
        value = (word >> self.lsb) & ((1 << self.width) - 1)
        return bool(value) if self.is_flag else value

    def insert(self, value: int, where: str) -> int:
        """Field value placed in its word; EncodeError if it does not fit."""
        value = int(value)
        if self.address:
            if value < 0 or value & ~self.mask:
                raise EncodeError(
                    f"{where}.{self.label}",
                    f"address {value:#x} has bits outside [{self.msb}:{self.lsb}] "
                    f"(alignment {1 << self.lsb:#x})",
                )
            return value
        limit = (1 << self.width) - 1
        if not 0 <= value <= limit:
            raise EncodeError(f"{where}.{self.label}", f"{value} out of range 0..{limit:#x}")
        return value << self.lsb


def _ranges(word_mask: int) -> list[tuple[int, int]]:
    """Contiguous (msb, lsb) runs of set bits in a mask, low to high."""
    runs = []
    bit = 0
    while word_mask >> bit:
        if (word_mask >> bit) & 1:
            lsb = bit
            while (word_mask >> bit) & 1:
                bit += 1
            runs.append((bit - 1, lsb))
        else:
            bit += 1
    return runs


class Layout:
    """A structure of `n_words` words of `word_bits` bits described by a field table.

    Bits covered by no field and no `opaque` mask are RES0: decoding rejects them when set.
    Opaque bits (IMPLEMENTATION DEFINED or not modelled) are neither checked nor encoded.
    """

    def __init__(
        self,
        name: str,
        n_words: int,
        fields: Iterable[Field],
        *,
        word_bits: int = 64,
        opaque: Mapping[int, int] | None = None,
    ) -> None:
        self.name = name
        self.n_words = n_words
        self.word_bits = word_bits
        self.fields: tuple[Field, ...] = tuple(fields)
        self.opaque = dict(opaque or {})
        full = (1 << word_bits) - 1
        used = [0] * n_words
        for field in self.fields:
            if not 0 <= field.word < n_words or field.msb >= word_bits or field.lsb > field.msb:
                raise ValueError(f"{name}.{field.label}: bad position")
            if used[field.word] & field.mask:
                raise ValueError(f"{name}.{field.label}: overlaps another field")
            used[field.word] |= field.mask
        self.reserved = tuple(full & ~(used[i] | self.opaque.get(i, 0)) for i in range(n_words))
        self.by_name = {field.name: field for field in self.fields}

    @property
    def n_bytes(self) -> int:
        """Size of the structure in bytes."""
        return self.n_words * self.word_bits // 8

    def words(self, data: WordsLike) -> tuple[int, ...]:
        """Little-endian bytes or a sequence of words, checked for size, as words."""
        return as_words(data, self.n_words, self.word_bits, self.name)

    def check_reserved(self, words: Sequence[int], skip: Mapping[int, int] | None = None) -> None:
        """Raise DecodeError naming the first RES0 range that has bits set."""
        for index, word in enumerate(words):
            bad = word & self.reserved[index] & ~(skip or {}).get(index, 0)
            if bad:
                for msb, lsb in _ranges(self.reserved[index]):
                    if bad & mask(msb, lsb):
                        base = index * self.word_bits
                        span = f"{base + msb}:{base + lsb}" if msb != lsb else f"{base + lsb}"
                        raise DecodeError(
                            f"{self.name}.RES0[{span}]",
                            f"reserved bits must be zero, word {index} is {word:#x}",
                        )

    def unpack(self, words: Sequence[int], *, strict: bool = True) -> dict[str, Any]:
        """Field values by name; RES0 bits checked when `strict`."""
        if strict:
            self.check_reserved(words)
        return {field.name: field.extract(words[field.word]) for field in self.fields}

    def pack(self, values: Mapping[str, Any]) -> list[int]:
        """Words holding `values` (missing fields are zero); EncodeError for a bad value."""
        unknown = set(values) - set(self.by_name)
        if unknown:
            raise EncodeError(f"{self.name}.{sorted(unknown)[0]}", "no such field here")
        words = [0] * self.n_words
        for name, value in values.items():
            field = self.by_name[name]
            words[field.word] |= field.insert(value, self.name)
        return words

    def to_bytes(self, words: Sequence[int]) -> bytes:
        """Words as little-endian bytes."""
        size = self.word_bits // 8
        return b"".join(word.to_bytes(size, "little") for word in words)


def as_words(data: WordsLike, n_words: int, word_bits: int, what: str) -> tuple[int, ...]:
    """Split little-endian bytes (or check a word sequence) into exactly `n_words` words."""
    size = word_bits // 8
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) != n_words * size:
            raise DecodeError(what, f"need {n_words * size} bytes, got {len(raw)}")
        return tuple(
            int.from_bytes(raw[i * size : (i + 1) * size], "little") for i in range(n_words)
        )
    words = tuple(data)
    if len(words) != n_words:
        raise DecodeError(what, f"need {n_words} {word_bits}-bit words, got {len(words)}")
    for index, word in enumerate(words):
        if not isinstance(word, int) or not 0 <= word < 1 << word_bits:
            raise DecodeError(f"{what}.word{index}", f"{word!r} is not a {word_bits}-bit value")
    return words


def reserved_value(field: str, value: int, width: int) -> DecodeError:
    """DecodeError for a field holding a reserved encoding, formatted like the spec."""
    return DecodeError(field, f"reserved value 0b{value:0{width}b}")


class Packed:
    """Mixin for dataclasses whose attributes are exactly the fields of their `LAYOUT`."""

    LAYOUT: ClassVar[Layout]

    def to_words(self) -> list[int]:
        """The structure as words, EncodeError for a field that does not fit."""
        return self.LAYOUT.pack({f.name: getattr(self, f.name) for f in self.LAYOUT.fields})
