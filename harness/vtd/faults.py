"""Primary fault records: the 128-bit fault-recording registers (FRCD_REG).

Layout per the VT-d spec (section 11.4.14) and the kernel's ``dma_frcd_*`` macros:

    11:0     reserved
    63:12    FI    faulting page address (interrupt index in 63:48 for IR faults)
    79:64    SID   requester ID
    91:80    reserved
    92       T2    type bit 2 (T2:T1 = 00 write, 01 read, 10 page request, 11 AtomicOp)
    93       PRIV  privilege-mode requested
    94       EXE   execute requested
    95       PP    PASID present
    103:96   FR    fault reason
    123:104  PV    PASID value
    125:124  AT    address type (0 untranslated, 1 translation request, 2 translated)
    126      T1    type bit 1 (kernel ``dma_frcd_type``: 1 prints as "DMA Read")
    127      F     fault pending

``pasid`` is ``None`` when PP is clear; a record with PP clear but a non-zero PV, or AT=3,
does not decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from harness.errors import DecodeError
from harness.vtd._bits import Bits, ErrorType, Layout, Packed, RequesterId, bit
from harness.vtd.reasons import FaultKind, fault_kind, fault_reason_name

_LAYOUT = Layout(
    "FaultRecord",
    2,
    (
        Bits("address", "FI", 0, 12, 63, in_place=True),
        Bits("sid", "SID", 1, 0, 15),
        bit("t2", "T2", 1, 28),
        bit("priv", "PRIV", 1, 29),
        bit("exe", "EXE", 1, 30),
        bit("pasid_present", "PP", 1, 31),
        Bits("reason", "FR", 1, 32, 39),
        Bits("pasid_value", "PV", 1, 40, 59),
        Bits("at", "AT", 1, 60, 61),
        bit("t1", "T1", 1, 62),
        bit("fault", "F", 1, 63),
    ),
)


def pasid_fields(pasid: int | None) -> dict[str, Any]:
    """PP and PV layout values for an optional PASID."""
    return {"pasid_present": pasid is not None, "pasid_value": 0 if pasid is None else pasid}


def pasid_from(struct_name: str, values: dict[str, Any]) -> int | None:
    """Pop PP and PV from unpacked values: the PASID, or None when PP is clear."""
    present = values.pop("pasid_present")
    value = values.pop("pasid_value")
    if not present and value:
        raise DecodeError(f"{struct_name}.PV", f"PASID value {value:#x} with PASID-present clear")
    return value if present else None


@dataclass(frozen=True)
class FaultRecord(Packed, RequesterId):
    """One primary fault record, as read from a fault-recording register."""

    LAYOUT: ClassVar[Layout] = _LAYOUT

    sid: int
    address: int = 0
    reason: int = 0
    pasid: int | None = None
    t1: bool = False
    t2: bool = False
    priv: bool = False
    exe: bool = False
    at: int = 0
    fault: bool = True

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
        pasid = pasid_from("FaultRecord", values)
        return cls(pasid=pasid, **values)

    def _check(self, error: ErrorType) -> None:
        if self.at == 3:
            raise error("FaultRecord.AT", "reserved address type 3")

    @classmethod
    def dma(
        cls,
        sid: int,
        address: int,
        reason: int,
        *,
        is_write: bool,
        pasid: int | None = None,
        priv: bool = False,
        exe: bool = False,
    ) -> Self:
        """A DMA-remapping fault record for a read or write request."""
        return cls(
            sid=sid,
            address=address,
            reason=reason,
            pasid=pasid,
            t1=not is_write,
            priv=priv,
            exe=exe,
        )

    @property
    def request_type(self) -> str:
        """``write``, ``read``, ``page-request`` or ``atomic`` (from T2:T1)."""
        return ("write", "read", "page-request", "atomic")[self.t2 << 1 | self.t1]

    @property
    def is_write(self) -> bool:
        """A write request (T2=0, T1=0): what the kernel prints as "DMA Write"."""
        return not self.t1 and not self.t2

    @property
    def is_read(self) -> bool:
        return self.t1 and not self.t2

    @property
    def is_page_request(self) -> bool:
        return self.t2 and not self.t1

    @property
    def reason_name(self) -> str:
        """The kernel's name for the fault reason (as printed in dmesg)."""
        return fault_reason_name(self.reason)

    @property
    def kind(self) -> FaultKind:
        """DMA remapping, interrupt remapping or unknown, by the reason code."""
        return fault_kind(self.reason)

    @property
    def interrupt_index(self) -> int:
        """The interrupt index of an interrupt-remapping fault (FI bits 63:48)."""
        return self.address >> 48
