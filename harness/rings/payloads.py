"""Vendor record checks for the rings that carry them: fast validity test, full decode on demand."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Protocol

from harness.errors import DecodeError
from harness.rings.expect import FaultView
from harness.smmuv3 import SmmuEvent, decode_event
from harness.smmuv3.events import LAYOUTS

_WORDS = struct.Struct("<4Q")


class PayloadCheck(Protocol):
    """What a ring checker needs from a vendor record format."""

    size: int

    def problem_at(self, buf: bytes, offset: int) -> str | None:
        """None if the record at ``offset`` is well formed, else the DecodeError text."""

    def view(self, position: int, record: bytes) -> FaultView:
        """The record's fields for expectation matching (only called for valid records)."""


def smmu_view(position: int, event: SmmuEvent) -> FaultView:
    """What expectations can test in a decoded SMMUv3 event record."""
    return FaultView(
        position,
        sid=event.sid,
        pasid=event.ssid,
        address=event.address,
        reason=event.event_id,
        reason_name=event.name,
        is_write=event.is_write if event.rnw is not None else None,
    )


class _ViewFields:
    """The fields of one event type that a FaultView needs, read straight from the words."""

    def __init__(self, layout: Any) -> None:
        fields = layout.by_name
        self.name: str = layout.name
        self.sid = fields["sid"]
        self.ssv = fields.get("ssv")
        self.ssid = fields.get("ssid")
        self.address = fields.get("input_addr")
        self.rnw = fields.get("rnw")

    def view(self, position: int, words: tuple[int, ...]) -> FaultView:
        ssid = None
        if self.ssid is not None and (self.ssv is None or self.ssv.extract(words[self.ssv.word])):
            ssid = int(self.ssid.extract(words[self.ssid.word]))
        address = self.address
        rnw = self.rnw
        return FaultView(
            position,
            sid=int(self.sid.extract(words[self.sid.word])),
            pasid=ssid,
            address=None if address is None else int(address.extract(words[address.word])),
            reason=words[0] & 0xFF,
            reason_name=self.name,
            is_write=None if rnw is None else not rnw.extract(words[rnw.word]),
        )


def _stage1_unknown_word3() -> dict[int, int]:
    """Event IDs whose word 3 (IPA) is UNKNOWN, hence unchecked, unless S2 is set: S2's mask."""
    return {
        eid: layout.by_name["s2"].mask for eid, layout in LAYOUTS.items() if "ipa" in layout.by_name
    }


class SmmuEventCheck:
    """SMMUv3 event records: RES0 masks from harness.smmuv3's layouts, decode_event for the rest.

    The fast test accepts exactly what ``decode_event`` accepts for the architected events (a
    property test holds the two together); anything it rejects, including IMPDEF events, is
    handed to ``decode_event`` so the error text is always that module's.  ``strict=False``
    skips RES0 checks, for records written by QEMU's emulated SMMUv3.
    """

    size = 32

    def __init__(self, *, strict: bool = True) -> None:
        self.strict = strict
        self.reserved = {
            eid: layout.reserved if strict else (0, 0, 0, 0) for eid, layout in LAYOUTS.items()
        }
        self.s2_mask = _stage1_unknown_word3() if strict else {}
        self.view_fields = {eid: _ViewFields(layout) for eid, layout in LAYOUTS.items()}

    def problem_at(self, buf: bytes, offset: int) -> str | None:
        w0, w1, w2, w3 = _WORDS.unpack_from(buf, offset)
        reserved = self.reserved.get(w0 & 0xFF)
        if reserved is not None and not (w0 & reserved[0] or w1 & reserved[1] or w2 & reserved[2]):
            if not w3 & reserved[3]:
                return None
            s2 = self.s2_mask.get(w0 & 0xFF)
            if s2 is not None and not w1 & s2:
                return None
        try:
            decode_event(buf[offset : offset + 32], strict=self.strict)
        except DecodeError as error:
            return str(error)
        return None

    def view(self, position: int, record: bytes) -> FaultView:
        words = _WORDS.unpack_from(record)
        fields = self.view_fields.get(words[0] & 0xFF)
        if fields is None:
            return smmu_view(position, decode_event(record, strict=self.strict))
        return fields.view(position, words)


class DecoderCheck:
    """Any ``decode(bytes) -> object`` raising DecodeError, with a function making views."""

    def __init__(
        self,
        size: int,
        decode: Callable[[bytes], object],
        view: Callable[[int, object], FaultView] | None = None,
    ) -> None:
        self.size = size
        self.decode = decode
        self.make_view = view

    def problem_at(self, buf: bytes, offset: int) -> str | None:
        try:
            self.decode(buf[offset : offset + self.size])
        except DecodeError as error:
            return str(error)
        return None

    def view(self, position: int, record: bytes) -> FaultView:
        if self.make_view is None:
            return FaultView(position)
        return self.make_view(position, self.decode(record))
