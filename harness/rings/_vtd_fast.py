"""VT-d 128-bit records checked with masks from harness.vtd's layouts; decode only on doubt."""

from __future__ import annotations

import struct
from typing import Any

from harness.errors import DecodeError

QWORDS = struct.Struct("<2Q")


class FieldBits:
    """Where one field of a harness.vtd layout lives: qword, mask and shift."""

    def __init__(self, layout: Any, attr: str) -> None:
        bits = next(f for f in layout.fields if f.attr == attr)
        self.word: int = bits.word
        self.mask: int = bits.mask
        self.shift: int = 0 if bits.in_place else bits.lo

    def get(self, w0: int, w1: int) -> int:
        return ((w1 if self.word else w0) & self.mask) >> self.shift


class FastRecord:
    """Validity of a harness.vtd ``Packed`` record class without building the object.

    Checks the layout's fixed bits, RSVD masks, the PP/PV rule and any ``forbidden`` field
    values; whenever one fails, the class's own ``decode`` is run so the error text (and the
    final say) is harness.vtd's.  A property test keeps this equal to ``decode``.
    """

    def __init__(self, cls: Any, size: int, forbidden: dict[str, int] | None = None) -> None:
        layout = cls.LAYOUT
        self.cls = cls
        self.size = size
        self.reserved0, self.reserved1 = layout.reserved[0], layout.reserved[1]
        self.fixed = tuple((w, m, v) for w, (m, v) in layout.fixed.items())
        self.pasid_present = FieldBits(layout, "pasid_present")
        self.pasid_value = FieldBits(layout, "pasid_value")
        self.forbidden = tuple(
            (FieldBits(layout, attr), value) for attr, value in (forbidden or {}).items()
        )

    def looks_valid(self, w0: int, w1: int) -> bool:
        """True when no mask rule is broken (then ``decode`` would succeed too)."""
        if w0 & self.reserved0 or w1 & self.reserved1:
            return False
        for word, mask, value in self.fixed:
            if (w1 if word else w0) & mask != value:
                return False
        if not self.pasid_present.get(w0, w1) and self.pasid_value.get(w0, w1):
            return False
        return all(field.get(w0, w1) != value for field, value in self.forbidden)

    def problem(self, data: bytes, offset: int) -> str | None:
        """None if the record at ``offset`` decodes, else the DecodeError text."""
        if self.looks_valid(*QWORDS.unpack_from(data, offset)):
            return None
        try:
            self.cls.decode(data[offset : offset + self.size])
        except DecodeError as error:
            return str(error)
        return None
