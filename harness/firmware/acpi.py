"""ACPI system description tables: the common 36-byte header, checksums, OEM revisions.

A table is ``bytes``; :func:`parse_header` decodes its header and :func:`verify_table`
checks what the kernel's initrd table upgrade (drivers/acpi/tables.c) checks before it
uses a table: a known signature, a length equal to the file size and a zero byte sum.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from harness.errors import DecodeError, EncodeError

HEADER_SIZE = 36
_HEADER = struct.Struct("<4sIBB6s8sI4sI")
CHECKSUM_OFFSET = 9
OEM_REVISION_OFFSET = 24

UPGRADABLE_SIGNATURES = frozenset(
    (
        "BERT", "BGRT", "CPEP", "ECDT", "EINJ", "ERST", "HEST", "APIC", "MSCT", "SBST", "SLIT",
        "SRAT", "ASF!", "BOOT", "DBGP", "DMAR", "HPET", "IBFT", "IVRS", "MCFG", "MCHI", "SLIC",
        "SPCR", "SPMI", "TCPA", "UEFI", "WAET", "WDAT", "WDDT", "WDRT", "DSDT", "FACP", "PSDT",
        "RSDT", "XSDT", "SSDT", "IORT", "NFIT", "HMAT", "PPTT", "NHLT", "AEST", "CEDT", "AGDI",
        "NBFT", "SWFT", "MPAM",
    )
)  # fmt: skip
"""Signatures Linux 7.3's ACPI_TABLE_UPGRADE accepts from an initrd (``table_sigs``)."""


@dataclass(frozen=True)
class AcpiHeader:
    """The fields of struct acpi_table_header."""

    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int

    @property
    def identity(self) -> str:
        """``SIG-OEMID-OEMTABLEID``, the triple the kernel matches an upgrade against."""
        return f"{self.signature}-{self.oem_id}-{self.oem_table_id}"


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def parse_header(table: bytes) -> AcpiHeader:
    """Decode the header of ``table``; DecodeError if it is shorter than a header."""
    if len(table) < HEADER_SIZE:
        raise DecodeError("acpi_table_header", f"need {HEADER_SIZE} bytes, got {len(table)}")
    sig, length, rev, csum, oem, oem_table, oem_rev, creator, creator_rev = _HEADER.unpack_from(
        table
    )
    return AcpiHeader(
        _text(sig), length, rev, csum, _text(oem), _text(oem_table), oem_rev, _text(creator),
        creator_rev,
    )  # fmt: skip


def byte_sum(data: bytes) -> int:
    """The 8-bit sum of ``data``: 0 for a table with a correct checksum."""
    return sum(data) & 0xFF


def with_checksum(table: bytes) -> bytes:
    """``table`` with its checksum byte set so that all bytes sum to zero."""
    if len(table) < HEADER_SIZE:
        raise EncodeError("acpi_table_header", f"need {HEADER_SIZE} bytes, got {len(table)}")
    data = bytearray(table)
    data[CHECKSUM_OFFSET] = 0
    data[CHECKSUM_OFFSET] = -byte_sum(bytes(data)) & 0xFF
    return bytes(data)


def with_oem_revision(table: bytes, oem_revision: int) -> bytes:
    """``table`` with a new OEM revision (checksum not updated: call with_checksum after)."""
    if not 0 <= oem_revision < 1 << 32:
        raise EncodeError("acpi_table_header.oem_revision", f"{oem_revision} is not a u32")
    data = bytearray(table)
    struct.pack_into("<I", data, OEM_REVISION_OFFSET, oem_revision)
    return bytes(data)


def verify_table(table: bytes, signature: str | None = None) -> AcpiHeader:
    """The header of a table the kernel would accept as an initrd upgrade; DecodeError if not."""
    header = parse_header(table)
    if signature is not None and header.signature != signature:
        raise DecodeError("acpi_table_header.signature", f"{header.signature!r}, not {signature!r}")
    if header.signature not in UPGRADABLE_SIGNATURES:
        raise DecodeError(
            "acpi_table_header.signature", f"{header.signature!r} cannot be upgraded from an initrd"
        )
    if header.length != len(table):
        raise DecodeError(
            "acpi_table_header.length", f"{header.length} but the table has {len(table)} bytes"
        )
    if byte_sum(table):
        raise DecodeError(
            "acpi_table_header.checksum", f"bytes sum to {byte_sum(table):#04x}, not 0"
        )
    return header


def upgrades(new: AcpiHeader, old: AcpiHeader) -> bool:
    """Whether the kernel would let ``new`` replace ``old`` (same identity, newer OEM revision)."""
    return new.identity == old.identity and new.oem_revision > old.oem_revision


def build_table(
    signature: str,
    body: bytes,
    *,
    revision: int = 1,
    oem_id: str = "BOCHS ",
    oem_table_id: str = "BXPC    ",
    oem_revision: int = 1,
    creator_id: str = "BXPC",
    creator_revision: int = 1,
) -> bytes:
    """A table with a header in front of ``body`` and a correct checksum (QEMU's OEM IDs)."""
    fields = {"signature": (signature, 4), "oem_id": (oem_id, 6),
              "oem_table_id": (oem_table_id, 8), "creator_id": (creator_id, 4)}  # fmt: skip
    for name, (value, size) in fields.items():
        if len(value.encode("latin-1")) != size:
            raise EncodeError(f"acpi_table_header.{name}", f"{value!r} is not {size} characters")
    header = _HEADER.pack(
        signature.encode("latin-1"), HEADER_SIZE + len(body), revision, 0,
        oem_id.encode("latin-1"), oem_table_id.encode("latin-1"), oem_revision,
        creator_id.encode("latin-1"), creator_revision,
    )  # fmt: skip
    return with_checksum(header + body)
