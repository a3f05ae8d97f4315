"""Page-request descriptors: entries of the page request queue (PRQ), 128 bits + private data.

Layout per the VT-d spec (section 7.5.1.1), Linux's ``struct page_req_dsc``
(``drivers/iommu/intel/prq.c``) and QEMU's ``VTD_PRD_*`` macros:

qw0: 7:0 type (1), 8 PP, 9 PDP, 31:16 RID, 51:32 PASID, 52 EXE, 53 PM; 15:10, 63:54 reserved.
qw1: 0 R, 1 W, 2 LPIG, 11:3 PRGI, 63:12 ADDR. qw2-qw3: private data.

A PRQ slot is 32 bytes. ``decode`` takes 16 bytes (``private_data`` is ``None``) or 32
bytes; ``encode`` gives back the same length, so round trips are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Self

from harness.errors import EncodeError
from harness.vtd._bits import (
    U64,
    Bits,
    Layout,
    Packed,
    RequesterId,
    bit,
    bytes_from_words,
    words_from_bytes,
)
from harness.vtd.faults import pasid_fields, pasid_from

PAGE_REQUEST_TYPE = 1

_LAYOUT = Layout(
    "PageRequest",
    2,
    (
        bit("pasid_present", "PP", 0, 8),
        bit("pdp", "PDP", 0, 9),
        Bits("sid", "RID", 0, 16, 31),
        Bits("pasid_value", "PASID", 0, 32, 51),
        bit("exe", "EXE", 0, 52),
        bit("priv", "PM", 0, 53),
        bit("is_read", "R", 1, 0),
        bit("is_write", "W", 1, 1),
        bit("lpig", "LPIG", 1, 2),
        Bits("prgi", "PRGI", 1, 3, 11),
        Bits("address", "ADDR", 1, 12, 63, in_place=True),
    ),
    fixed={0: (0xFF, PAGE_REQUEST_TYPE)},
)


@dataclass(frozen=True)
class PageRequest(Packed, RequesterId):
    """One page request the IOMMU queued for software."""

    LAYOUT: ClassVar[Layout] = _LAYOUT

    sid: int
    address: int = 0
    pasid: int | None = None
    is_read: bool = False
    is_write: bool = False
    exe: bool = False
    priv: bool = False
    lpig: bool = False
    prgi: int = 0
    pdp: bool = False
    private_data: tuple[int, int] | None = None

    def _values(self) -> dict[str, Any]:
        values = {
            f.attr: getattr(self, f.attr)
            for f in self.LAYOUT.fields
            if f.attr not in ("pasid_present", "pasid_value")
        }
        values.update(pasid_fields(self.pasid))
        return values

    @classmethod
    def _from_values(cls, values: dict[str, Any]) -> Self:
        return cls(pasid=pasid_from("PageRequest", values), **values)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode a 16-byte descriptor or a 32-byte PRQ slot (with private data)."""
        words = words_from_bytes("PageRequest", data, (16, 32))
        obj = cls.from_words(words[:2])
        if len(words) == 4:
            obj = replace(obj, private_data=(words[2], words[3]))
        return obj

    def encode(self) -> bytes:
        """16 bytes, or 32 when ``private_data`` is set."""
        words = self.to_words()
        if self.private_data is not None:
            words += _private_words(self.private_data)
        return bytes_from_words(words)

    @property
    def is_stop_marker(self) -> bool:
        """LPIG set with neither read nor write: a stop marker, needing no response."""
        return self.lpig and not self.is_read and not self.is_write

    @property
    def needs_response(self) -> bool:
        """The last request of a group (LPIG) that is not a stop marker needs a response."""
        return self.lpig and not self.is_stop_marker


def _private_words(private: object) -> list[int]:
    if (
        not isinstance(private, tuple)
        or len(private) != 2
        or not all(
            isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= U64 for w in private
        )
    ):
        raise EncodeError("PageRequest.private_data", f"expected two 64-bit ints, got {private!r}")
    return [private[0], private[1]]
