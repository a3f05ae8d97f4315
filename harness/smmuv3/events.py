"""Event-queue records (32 bytes, 4 x 64-bit words): decode and encode.

Layouts follow SMMUv3 section 7.3; the fields the kernel reads were cross-checked against the
EVTQ_* masks in arm-smmu-v3.h. Bits a record defines as IMPLEMENTATION DEFINED (Reason,
GPCF) or that this model does not name are left unchecked; all others outside the named
fields are RES0 and rejected when `strict`.

Known QEMU deviations (use strict=False for records QEMU's emulated SMMUv3 wrote): it stores
the F_CD_FETCH fetch address in word 2 instead of word 3, and the full IPA, page offset
included, in word 3 of stage 2 translation faults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import DecodeError, EncodeError

from ._bits import Field, Layout, WordsLike, as_words, mask

EVENT_IDS = {
    "F_UUT": 0x01,
    "C_BAD_STREAMID": 0x02,
    "F_STE_FETCH": 0x03,
    "C_BAD_STE": 0x04,
    "F_BAD_ATS_TREQ": 0x05,
    "F_STREAM_DISABLED": 0x06,
    "F_TRANSL_FORBIDDEN": 0x07,
    "C_BAD_SUBSTREAMID": 0x08,
    "F_CD_FETCH": 0x09,
    "C_BAD_CD": 0x0A,
    "F_WALK_EABT": 0x0B,
    "F_TRANSLATION": 0x10,
    "F_ADDR_SIZE": 0x11,
    "F_ACCESS": 0x12,
    "F_PERMISSION": 0x13,
    "F_TLB_CONFLICT": 0x20,
    "F_CFG_CONFLICT": 0x21,
    "E_PAGE_REQUEST": 0x24,
    "F_VMS_FETCH": 0x25,
}
"""Architected event names to event numbers (IMPDEF events 0xE0-0xEF come on top)."""
EVENT_NAMES = {number: name for name, number in EVENT_IDS.items()}
IMPDEF_EVENT_IDS = range(0xE0, 0xF0)

VEVENT_EVENT_IDS = frozenset(
    EVENT_IDS[name]
    for name in (
        "C_BAD_STE",
        "F_STREAM_DISABLED",
        "C_BAD_SUBSTREAMID",
        "C_BAD_CD",
        "F_TRANSLATION",
        "F_ADDR_SIZE",
        "F_ACCESS",
        "F_PERMISSION",
    )
)
"""Events the kernel forwards to an ARM_SMMUV3 vEVENTQ (stage 1 ones, S2 == 0)."""

CLASS_NAMES = {0: "CD", 1: "TT", 2: "IN", 3: "Reserved"}
"""Event CLASS: CD fetch, stage 1 table walk, input address."""
CLASS_IDS = {name: value for value, name in CLASS_NAMES.items() if name != "Reserved"}

_FULL = mask(63, 0)
_POOL = {
    "event_id": ("EventID", 0, 7, 0),
    "ssv": ("SSV", 0, 11, 11),
    "ssid": ("SubstreamID", 0, 31, 12),
    "sid": ("StreamID", 0, 63, 32),
    "stag": ("STAG", 1, 15, 0),
    "stall": ("Stall", 1, 31, 31),
    "pnu": ("PnU", 1, 33, 33),
    "ind": ("InD", 1, 34, 34),
    "rnw": ("RnW", 1, 35, 35),
    "s2": ("S2", 1, 39, 39),
    "event_class": ("CLASS", 1, 41, 40),
    "ttrnw": ("TTRnW", 1, 44, 44),
    "input_addr": ("InputAddr", 2, 63, 0),
    "ipa": ("IPA", 3, 55, 12),
    "fetch_addr": ("FetchAddr", 3, 55, 3),
}
_ADDRESSES = {"ipa", "fetch_addr"}

_SSID = ("ssv", "ssid", "sid")
_ATTRS = ("pnu", "ind", "rnw")
_FAULT = (*_SSID, "stag", "stall", *_ATTRS, "s2", "event_class", "input_addr", "ipa")
_FAULT_OPAQUE = {1: 1 << 32 | mask(38, 36)}
_SPECS: dict[str, tuple[tuple[str, ...], dict[int, int]]] = {
    "F_UUT": ((*_SSID, *_ATTRS, "input_addr"), {1: mask(32, 0)}),
    "C_BAD_STREAMID": (_SSID, {}),
    "F_STE_FETCH": ((*_SSID, "fetch_addr"), {1: _FULL}),
    "C_BAD_STE": (_SSID, {}),
    "F_BAD_ATS_TREQ": ((*_SSID, "input_addr"), {1: _FULL, 3: _FULL}),
    "F_STREAM_DISABLED": (("sid",), {}),
    "F_TRANSL_FORBIDDEN": (("sid", "rnw", "input_addr"), {}),
    "C_BAD_SUBSTREAMID": (("ssid", "sid"), {}),
    "F_CD_FETCH": ((*_SSID, "fetch_addr"), {1: _FULL}),
    "C_BAD_CD": (_SSID, {}),
    "F_WALK_EABT": (
        (*_SSID, *_ATTRS, "s2", "event_class", "input_addr", "fetch_addr"),
        {1: mask(32, 0) | mask(38, 36)},
    ),
    "F_TRANSLATION": (_FAULT, {1: _FAULT_OPAQUE[1] | 1 << 44}),
    "F_ADDR_SIZE": (_FAULT, {1: _FAULT_OPAQUE[1] | 1 << 44}),
    "F_ACCESS": ((*_FAULT, "ttrnw"), _FAULT_OPAQUE),
    "F_PERMISSION": ((*_FAULT, "ttrnw"), _FAULT_OPAQUE),
    "F_TLB_CONFLICT": ((*_SSID, "s2", "input_addr"), {1: _FULL & ~(1 << 39), 3: _FULL}),
    "F_CFG_CONFLICT": (_SSID, {1: _FULL, 2: _FULL, 3: _FULL}),
    "E_PAGE_REQUEST": ((*_SSID, "input_addr"), {1: _FULL, 3: _FULL}),
    "F_VMS_FETCH": ((*_SSID, "fetch_addr"), {1: _FULL}),
}


def _layout(name: str, keys: tuple[str, ...], opaque: Mapping[int, int]) -> Layout:
    return Layout(
        name,
        4,
        (Field(k, _POOL[k][0], *_POOL[k][1:], k in _ADDRESSES) for k in ("event_id", *keys)),
        opaque=opaque,
    )


LAYOUTS = {EVENT_IDS[name]: _layout(name, *spec) for name, spec in _SPECS.items()}
_IMPDEF_LAYOUT = _layout("IMPDEF_EVENT", ("sid",), {0: mask(31, 8), 1: _FULL, 2: _FULL, 3: _FULL})


@dataclass(frozen=True)
class SmmuEvent:
    """One decoded event record; fields the record type does not carry are None."""

    event_id: int
    name: str
    sid: int
    ssid: int | None = None
    """SubstreamID when SSV == 1 (always for C_BAD_SUBSTREAMID), else None."""
    address: int | None = None
    """InputAddr: the VA, IPA or PA the transaction presented."""
    ipa: int | None = None
    """IPA of a stage 2 fault (None for stage 1 faults, where the spec makes it UNKNOWN)."""
    fetch_addr: int | None = None
    """Address of the STE, CD, VMS or descriptor whose fetch failed."""
    rnw: bool | None = None
    privileged: bool | None = None
    instruction: bool | None = None
    stage2: bool = False
    event_class: int | None = None
    stall: bool = False
    stag: int | None = None
    tt_rnw: bool | None = None
    """TTRnW of F_ACCESS/F_PERMISSION with CLASS == TT: the descriptor access was a read."""
    raw: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def is_write(self) -> bool:
        """The faulting transaction was a write (RnW == 0)."""
        return self.rnw is False

    @property
    def class_name(self) -> str | None:
        """CLASS as "CD", "TT", "IN" (or "Reserved"), None if the record has none."""
        return None if self.event_class is None else CLASS_NAMES[self.event_class]

    @property
    def forwarded_to_vevent(self) -> bool:
        """The kernel relays this record to a vEVENTQ (for a device with a vDEVICE)."""
        return self.event_id in VEVENT_EVENT_IDS and not self.stage2 and not self.stall


def _opt_bool(values: Mapping[str, Any], key: str) -> bool | None:
    return bool(values[key]) if key in values else None


def decode_event(data: WordsLike, *, strict: bool = True) -> SmmuEvent:
    """Decode a 32-byte event record; DecodeError for short data, unknown IDs, RES0 bits.

    With `strict=False` RES0 bits are ignored (see the module notes on QEMU).
    """
    words = as_words(data, 4, 64, "EVT")
    event_id = words[0] & 0xFF
    layout = LAYOUTS.get(event_id)
    if layout is None:
        if event_id not in IMPDEF_EVENT_IDS:
            raise DecodeError("EVT.EventID", f"unknown event number {event_id:#04x}")
        layout = _IMPDEF_LAYOUT
        name = f"IMPDEF_EVENT_{event_id:#04x}"
    else:
        name = layout.name
    values = layout.unpack(words, strict=False)
    stage2 = bool(values.get("s2", False))
    if strict:
        # For a stage 1 fault the spec makes the IPA word UNKNOWN.
        unknown_ipa = "ipa" in values and not stage2
        layout.check_reserved(words, {3: _FULL} if unknown_ipa else None)
    has_ssid = values.get("ssv", "ssid" in values)
    ssid = values["ssid"] if has_ssid else None
    ttrnw = values.get("ttrnw") if values.get("event_class") == CLASS_IDS["TT"] else None
    return SmmuEvent(
        event_id=event_id,
        name=name,
        sid=values["sid"],
        ssid=ssid,
        address=values.get("input_addr"),
        ipa=values["ipa"] if stage2 and "ipa" in values else None,
        fetch_addr=values.get("fetch_addr"),
        rnw=_opt_bool(values, "rnw"),
        privileged=_opt_bool(values, "pnu"),
        instruction=_opt_bool(values, "ind"),
        stage2=stage2,
        event_class=values.get("event_class"),
        stall=bool(values.get("stall", False)),
        stag=values.get("stag"),
        tt_rnw=None if ttrnw is None else bool(ttrnw),
        raw=(words[0], words[1], words[2], words[3]),
    )


def encode_event(
    event: int | str,
    *,
    sid: int = 0,
    ssid: int | None = None,
    address: int | None = None,
    ipa: int | None = None,
    fetch_addr: int | None = None,
    is_write: bool | None = None,
    privileged: bool | None = None,
    instruction: bool | None = None,
    stage2: bool | None = None,
    event_class: int | str | None = None,
    stall: bool | None = None,
    stag: int | None = None,
    tt_rnw: bool | None = None,
) -> bytes:
    """A 32-byte event record; EncodeError for a field the event type does not carry."""
    event_id = EVENT_IDS.get(event, -1) if isinstance(event, str) else event
    layout = LAYOUTS.get(event_id)
    if layout is None:
        raise EncodeError("EVT.EventID", f"unknown or unmodelled event {event!r}")
    if isinstance(event_class, str):
        if event_class not in CLASS_IDS:
            raise EncodeError(f"{layout.name}.CLASS", f"{event_class!r} is not CD, TT or IN")
        event_class = CLASS_IDS[event_class]
    given: dict[str, Any] = {
        "input_addr": address,
        "ipa": ipa,
        "fetch_addr": fetch_addr,
        "rnw": None if is_write is None else not is_write,
        "pnu": privileged,
        "ind": instruction,
        "s2": stage2,
        "event_class": event_class,
        "stall": stall,
        "stag": stag,
        "ttrnw": tt_rnw,
    }
    values: dict[str, Any] = {"event_id": event_id, "sid": sid}
    if ssid is not None:
        if "ssid" not in layout.by_name:
            raise EncodeError(f"{layout.name}.SubstreamID", "not carried by this event")
        values["ssid"] = ssid
        if "ssv" in layout.by_name:
            values["ssv"] = True
    for key, value in given.items():
        if value is None:
            continue
        if key not in layout.by_name:
            raise EncodeError(f"{layout.name}.{_POOL[key][0]}", "not carried by this event")
        values[key] = value
    return layout.to_bytes(layout.pack(values))
