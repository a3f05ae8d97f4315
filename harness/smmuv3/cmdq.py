"""Command-queue entries (16 bytes, 2 x 64-bit words): encode and decode.

Layouts follow SMMUv3 section 4 (command formats); the ones the kernel issues were
cross-checked against the CMDQ_* masks and opcodes in arm-smmu-v3.h. SCALE is the 6-bit
field of SMMUs with SMMU_IDR5.DS (bit 25 is RES0 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from harness.errors import DecodeError, EncodeError

from ._bits import Field, Layout, WordsLike, as_words, reserved_value

OPCODES = {
    "PREFETCH_CONFIG": 0x01,
    "CFGI_STE": 0x03,
    "CFGI_STE_RANGE": 0x04,
    "CFGI_CD": 0x05,
    "CFGI_CD_ALL": 0x06,
    "TLBI_NH_ALL": 0x10,
    "TLBI_NH_ASID": 0x11,
    "TLBI_NH_VA": 0x12,
    "TLBI_NH_VAA": 0x13,
    "TLBI_EL3_ALL": 0x18,
    "TLBI_EL3_VA": 0x1A,
    "TLBI_EL2_ALL": 0x20,
    "TLBI_EL2_ASID": 0x21,
    "TLBI_EL2_VA": 0x22,
    "TLBI_EL2_VAA": 0x23,
    "TLBI_S12_VMALL": 0x28,
    "TLBI_S2_IPA": 0x2A,
    "TLBI_NSNH_ALL": 0x30,
    "ATC_INV": 0x40,
    "PRI_RESP": 0x41,
    "RESUME": 0x44,
    "STALL_TERM": 0x45,
    "CMD_SYNC": 0x46,
}
"""Command name (without CMD_ except CMD_SYNC) to opcode."""
OPCODE_NAMES = {opcode: name for name, opcode in OPCODES.items()}

CFGI_ALL_RANGE = 31
"""CMD_CFGI_ALL is CMD_CFGI_STE_RANGE with Range == 31."""
ATC_INV_SIZE_ALL = 52
"""ATC_INV Size that invalidates the whole ATC."""

_F = {
    "opcode": ("Opcode", 0, 7, 0),
    "global_inv": ("Global", 0, 9, 9),
    "ssec": ("SSec", 0, 10, 10),
    "ssv": ("SSV", 0, 11, 11),
    "ssid": ("SubstreamID", 0, 31, 12),
    "sid": ("StreamID", 0, 63, 32),
    "vmid": ("VMID", 0, 47, 32),
    "asid": ("ASID", 0, 63, 48),
    "num": ("NUM", 0, 16, 12),
    "scale": ("SCALE", 0, 25, 20),
    "resume_resp": ("Resp", 0, 13, 12),
    "cs": ("CS", 0, 13, 12),
    "msh": ("MSH", 0, 23, 22),
    "msiattr": ("MSIAttr", 0, 27, 24),
    "msidata": ("MSIData", 0, 63, 32),
    "leaf": ("Leaf", 1, 0, 0),
    "range": ("Range", 1, 4, 0),
    "ttl": ("TTL", 1, 9, 8),
    "tg": ("TG", 1, 11, 10),
    "va": ("Address", 1, 63, 12),
    "ipa": ("Address", 1, 55, 12),
    "atc_size": ("Size", 1, 5, 0),
    "prg_index": ("PRGIndex", 1, 8, 0),
    "pri_resp": ("Resp", 1, 13, 12),
    "stag": ("STAG", 1, 15, 0),
    "msiaddr": ("MSIAddress", 1, 55, 2),
}
"""Field positions; several map to one Command attribute (see _ATTRIBUTE)."""

_ATTRIBUTE = {
    "resume_resp": "resp",
    "pri_resp": "resp",
    "va": "address",
    "ipa": "address",
    "atc_size": "size",
}
_ADDRESSES = {"va", "ipa", "msiaddr"}

_RANGE_TLBI = ("num", "scale", "leaf", "ttl", "tg")
_SHAPES: dict[str, tuple[str, ...]] = {
    "PREFETCH_CONFIG": ("ssec", "ssv", "ssid", "sid"),
    "CFGI_STE": ("ssec", "sid", "leaf"),
    "CFGI_STE_RANGE": ("ssec", "sid", "range"),
    "CFGI_CD": ("ssec", "ssid", "sid", "leaf"),
    "CFGI_CD_ALL": ("ssec", "sid"),
    "TLBI_NH_ALL": ("vmid",),
    "TLBI_NH_ASID": ("vmid", "asid"),
    "TLBI_NH_VA": ("vmid", "asid", *_RANGE_TLBI, "va"),
    "TLBI_NH_VAA": ("vmid", *_RANGE_TLBI, "va"),
    "TLBI_EL3_ALL": (),
    "TLBI_EL3_VA": (*_RANGE_TLBI, "va"),
    "TLBI_EL2_ALL": (),
    "TLBI_EL2_ASID": ("asid",),
    "TLBI_EL2_VA": ("asid", *_RANGE_TLBI, "va"),
    "TLBI_EL2_VAA": (*_RANGE_TLBI, "va"),
    "TLBI_S12_VMALL": ("vmid",),
    "TLBI_S2_IPA": ("vmid", *_RANGE_TLBI, "ipa"),
    "TLBI_NSNH_ALL": (),
    "ATC_INV": ("global_inv", "ssv", "ssid", "sid", "atc_size", "va"),
    "PRI_RESP": ("ssv", "ssid", "sid", "prg_index", "pri_resp"),
    "RESUME": ("ssec", "resume_resp", "sid", "stag"),
    "STALL_TERM": ("ssec", "sid"),
    "CMD_SYNC": ("cs", "msh", "msiattr", "msidata", "msiaddr"),
}


def _layout(name: str) -> Layout:
    keys = ("opcode", *_SHAPES[name])
    return Layout(
        f"CMD_{name}" if name != "CMD_SYNC" else name,
        2,
        (Field(_ATTRIBUTE.get(k, k), _F[k][0], *_F[k][1:], k in _ADDRESSES) for k in keys),
    )


LAYOUTS = {OPCODES[name]: _layout(name) for name in _SHAPES}
"""Opcode to command layout."""


@dataclass(frozen=True)
class Command:
    """One command; only the fields of its opcode's format may be non-zero.

    `address` is the VA/IPA/ATC address in place (bits [11:0] zero), `size` the ATC_INV
    Size, `resp` the RESUME or PRI_RESP response code.
    """

    opcode: int
    ssec: bool = False
    ssv: bool = False
    ssid: int = 0
    sid: int = 0
    vmid: int = 0
    asid: int = 0
    num: int = 0
    scale: int = 0
    leaf: bool = False
    ttl: int = 0
    tg: int = 0
    address: int = 0
    range: int = 0
    size: int = 0
    global_inv: bool = False
    resp: int = 0
    stag: int = 0
    prg_index: int = 0
    cs: int = 0
    msh: int = 0
    msiattr: int = 0
    msidata: int = 0
    msiaddr: int = 0

    @property
    def name(self) -> str:
        """Command name as in the spec (CMD_ prefix), CFGI_ALL for CFGI_STE_RANGE Range 31."""
        if self.opcode == OPCODES["CFGI_STE_RANGE"] and self.range == CFGI_ALL_RANGE:
            return "CMD_CFGI_ALL"
        name = OPCODE_NAMES.get(self.opcode, f"{self.opcode:#04x}")
        return name if name == "CMD_SYNC" else f"CMD_{name}"

    def words(self) -> tuple[int, int]:
        """The command as two 64-bit words; EncodeError for fields its format lacks."""
        layout = LAYOUTS.get(self.opcode)
        if layout is None:
            raise EncodeError("CMD.Opcode", f"unknown opcode {self.opcode:#x}")
        values: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in layout.by_name:
                values[item.name] = value
            elif value:
                raise EncodeError(f"{layout.name}.{item.name}", "not a field of this command")
        word0, word1 = layout.pack(values)
        return word0, word1

    def encode(self) -> bytes:
        """The 16-byte little-endian command."""
        word0, word1 = self.words()
        return word0.to_bytes(8, "little") + word1.to_bytes(8, "little")


def make_command(name: str, **values: Any) -> Command:
    """Command by name ("TLBI_NH_VA", "CMD_CFGI_CD", "CFGI_ALL", ...), checked by encoding."""
    key = {"SYNC": "CMD_SYNC", "CMD_SYNC": "CMD_SYNC"}.get(name, name.removeprefix("CMD_"))
    if key == "CFGI_ALL":
        key = "CFGI_STE_RANGE"
        values.setdefault("range", CFGI_ALL_RANGE)
    if key not in OPCODES:
        raise EncodeError("CMD.Opcode", f"unknown command {name!r}")
    try:
        command = Command(OPCODES[key], **values)
    except TypeError as error:
        raise EncodeError(f"CMD_{key}", str(error)) from None
    command.words()
    return command


def decode_command(data: WordsLike) -> Command:
    """Decode 16 bytes (or 2 words); DecodeError for unknown opcodes, RES0 bits, bad values."""
    words = as_words(data, 2, 64, "CMD")
    opcode = words[0] & 0xFF
    layout = LAYOUTS.get(opcode)
    if layout is None:
        raise DecodeError("CMD.Opcode", f"unknown opcode {opcode:#04x}")
    command = Command(**layout.unpack(words))
    if "tg" in layout.by_name and command.tg == 0 and (command.num or command.scale or command.ttl):
        raise DecodeError(f"{layout.name}.TG", "NUM, SCALE and TTL are RES0 when TG == 0")
    if opcode == OPCODES["CMD_SYNC"] and command.cs == 3:
        raise reserved_value("CMD_SYNC.CS", command.cs, 2)
    if opcode in (OPCODES["RESUME"], OPCODES["PRI_RESP"]) and command.resp == 3:
        raise reserved_value(f"{layout.name}.Resp", command.resp, 2)
    return command


def encode_command(command: Command) -> bytes:
    """The 16-byte little-endian command."""
    return command.encode()
