"""The IO Remapping Table (Arm DEN 0049): nodes, root-complex memory flags, CANWBS.

Linux's arm-smmu-v3 driver lets userspace allocate a vIOMMU only if the SMMU has
IDR3.FWB or the device's PCI root complex node says CANWBS (bit 2 of the memory access
flags: the device's writes are coherent with every cache, so no cache maintenance is
needed); see arm_smmu_get_viommu_size() and iort_pci_rc_supports_canwbs().  QEMU's
emulated SMMU models no caches, so for it the claim is true, yet QEMU's IORT does not
make it.  :func:`set_canwbs` makes a copy that does: flag set, OEM revision raised (the
kernel only upgrades to a newer revision) and checksum fixed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from harness.errors import DecodeError, EncodeError
from harness.firmware.acpi import (
    HEADER_SIZE,
    AcpiHeader,
    build_table,
    parse_header,
    verify_table,
    with_checksum,
    with_oem_revision,
)

SIGNATURE = "IORT"
NODE_HEADER_SIZE = 16
ID_MAPPING_SIZE = 20
NODE_TYPES = {
    0: "ITS_GROUP",
    1: "NAMED_COMPONENT",
    2: "PCI_ROOT_COMPLEX",
    3: "SMMU",
    4: "SMMU_V3",
    5: "PMCG",
    6: "RMR",
    7: "IWB",
}
TYPE_ITS_GROUP, TYPE_NAMED_COMPONENT, TYPE_ROOT_COMPLEX, TYPE_SMMU_V3 = 0, 1, 2, 4

MF_COHERENCY = 1 << 0
"""CPM: the device's accesses are coherent."""
MF_ATTRIBUTES = 1 << 1
"""DACS: the device's memory attributes are fully coherent."""
MF_CANWBS = 1 << 2
"""CANWBS: coherent path to memory, writes never need cache maintenance."""

RC_MEMORY_PROPERTIES = NODE_HEADER_SIZE
"""Offset of the root complex node's memory access properties (u32 CCA, u8 AH, u16, u8 flags)."""
RC_MEMORY_FLAGS = RC_MEMORY_PROPERTIES + 7
RC_ATS_ATTRIBUTE = NODE_HEADER_SIZE + 8
RC_PCI_SEGMENT = NODE_HEADER_SIZE + 12
RC_MIN_SIZE = NODE_HEADER_SIZE + 16
_NODE = struct.Struct("<BHBIII")
_MAPPING = struct.Struct("<IIIII")
_IORT_FIELDS = struct.Struct("<III")


@dataclass(frozen=True)
class IdMapping:
    """One ID mapping: input IDs [input_base, input_base + id_count] go to an output node."""

    input_base: int
    id_count: int
    output_base: int
    output_reference: int
    flags: int


@dataclass(frozen=True)
class IortNode:
    """One node: its offset in the table, header fields, the raw bytes and its ID mappings."""

    offset: int
    type: int
    length: int
    revision: int
    identifier: int
    mappings: tuple[IdMapping, ...]
    data: bytes

    @property
    def type_name(self) -> str:
        return NODE_TYPES.get(self.type, f"reserved({self.type})")

    @property
    def memory_flags(self) -> int | None:
        """A root complex node's memory access flags (None for other nodes)."""
        return self.data[RC_MEMORY_FLAGS] if self.type == TYPE_ROOT_COMPLEX else None

    @property
    def canwbs(self) -> bool | None:
        """A root complex node's CANWBS flag (None for other nodes)."""
        flags = self.memory_flags
        return None if flags is None else bool(flags & MF_CANWBS)

    @property
    def pci_segment(self) -> int | None:
        """A root complex node's PCI segment number (None for other nodes)."""
        if self.type != TYPE_ROOT_COMPLEX:
            return None
        segment: int = struct.unpack_from("<I", self.data, RC_PCI_SEGMENT)[0]
        return segment


@dataclass(frozen=True)
class Iort:
    """A parsed IORT: header and nodes in table order."""

    header: AcpiHeader
    nodes: tuple[IortNode, ...]

    def of_type(self, node_type: int) -> list[IortNode]:
        return [node for node in self.nodes if node.type == node_type]

    @property
    def root_complexes(self) -> list[IortNode]:
        return self.of_type(TYPE_ROOT_COMPLEX)

    @property
    def canwbs(self) -> bool:
        """Every root complex node claims CANWBS (and there is at least one)."""
        rcs = self.root_complexes
        return bool(rcs) and all(rc.canwbs for rc in rcs)

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for verdict facts."""
        return {
            "identity": self.header.identity,
            "revision": self.header.revision,
            "oem_revision": self.header.oem_revision,
            "nodes": [node.type_name for node in self.nodes],
            "rc_memory_flags": [f"{rc.memory_flags:#04x}" for rc in self.root_complexes],
            "canwbs": self.canwbs,
        }


def parse_iort(table: bytes, *, check: bool = True) -> Iort:
    """Parse an IORT; with ``check`` the header must pass :func:`verify_table` too.

    DecodeError names the node whose bytes do not fit (length past the table end, a mapping
    array outside the node, a root complex node too short to hold its memory properties).
    """
    header = verify_table(table, SIGNATURE) if check else parse_header(table)
    if header.signature != SIGNATURE:
        raise DecodeError("IORT.signature", f"{header.signature!r} is not an IORT")
    end = min(header.length, len(table))
    if end < HEADER_SIZE + _IORT_FIELDS.size:
        raise DecodeError("IORT.length", f"{end} bytes cannot hold the IORT fields")
    count, node_offset, _ = _IORT_FIELDS.unpack_from(table, HEADER_SIZE)
    nodes: list[IortNode] = []
    offset = node_offset
    for index in range(count):
        where = f"IORT.node[{index}]"
        if offset + NODE_HEADER_SIZE > end:
            raise DecodeError(where, f"header at {offset:#x} runs past the table end {end:#x}")
        node_type, length, revision, identifier, mapping_count, mapping_offset = _NODE.unpack_from(
            table, offset
        )
        if length < NODE_HEADER_SIZE or offset + length > end:
            raise DecodeError(f"{where}.length", f"{length} at {offset:#x} does not fit the table")
        data = bytes(table[offset : offset + length])
        if mapping_count and mapping_offset + mapping_count * ID_MAPPING_SIZE > length:
            raise DecodeError(
                f"{where}.mapping_offset",
                f"{mapping_count} mappings at {mapping_offset:#x} run past the node ({length})",
            )
        mappings = tuple(
            IdMapping(*_MAPPING.unpack_from(data, mapping_offset + i * ID_MAPPING_SIZE))
            for i in range(mapping_count)
        )
        if node_type == TYPE_ROOT_COMPLEX and length < RC_MIN_SIZE:
            raise DecodeError(f"{where}.length", f"{length} is too short for a root complex node")
        nodes.append(IortNode(offset, node_type, length, revision, identifier, mappings, data))
        offset += length
    return Iort(header, tuple(nodes))


@dataclass(frozen=True)
class IortPatch:
    """The result of :func:`set_canwbs`: the new table and what changed."""

    table: bytes
    original: Iort
    patched: Iort
    changed_offsets: tuple[int, ...]
    """Byte offsets that differ from the original (flags, OEM revision, checksum)."""


def set_canwbs(table: bytes, *, segments: Sequence[int] | None = None) -> IortPatch:
    """A copy of ``table`` whose root complex nodes claim CANWBS, ready as an upgrade.

    ``segments`` limits the change to root complexes of those PCI segments (default: all).
    The OEM revision is raised by one, since Linux upgrades a firmware table only with a
    newer revision, and the checksum is fixed. The result is verified by parsing it again:
    EncodeError if anything but the intended bytes changed or no root complex was patched.
    """
    original = parse_iort(table)
    data = bytearray(table)
    patched_rcs = 0
    for rc in original.root_complexes:
        if segments is not None and rc.pci_segment not in segments:
            continue
        data[rc.offset + RC_MEMORY_FLAGS] |= MF_CANWBS
        patched_rcs += 1
    if not patched_rcs:
        raise EncodeError("IORT.root_complex", "no root complex node to set CANWBS in")
    if original.header.oem_revision == 0xFFFF_FFFF:
        raise EncodeError("IORT.oem_revision", "already 0xffffffff: an upgrade cannot be newer")
    new = with_checksum(with_oem_revision(bytes(data), original.header.oem_revision + 1))
    patched = parse_iort(new)
    changed = tuple(i for i, (a, b) in enumerate(zip(table, new, strict=True)) if a != b)
    allowed = {9, 24, 25, 26, 27} | {rc.offset + RC_MEMORY_FLAGS for rc in original.root_complexes}
    if not set(changed) <= allowed:
        raise EncodeError("IORT", f"unexpected bytes changed at {sorted(set(changed) - allowed)}")
    if len(patched.nodes) != len(original.nodes):
        raise EncodeError("IORT.nodes", "node count changed while patching")
    for rc in patched.root_complexes:
        if (segments is None or rc.pci_segment in segments) and not rc.canwbs:
            raise EncodeError("IORT.root_complex", f"CANWBS not set at {rc.offset:#x}")
    return IortPatch(new, original, patched, changed)


def _node(node_type: int, revision: int, identifier: int, body: bytes,
          mappings: Sequence[IdMapping]) -> bytes:  # fmt: skip
    mapping_offset = NODE_HEADER_SIZE + len(body) if mappings else 0
    length = NODE_HEADER_SIZE + len(body) + ID_MAPPING_SIZE * len(mappings)
    head = _NODE.pack(node_type, length, revision, identifier, len(mappings), mapping_offset)
    tail = b"".join(
        _MAPPING.pack(m.input_base, m.id_count, m.output_base, m.output_reference, m.flags)
        for m in mappings
    )
    return head + body + tail


def build_iort(
    *,
    smmu_base: int | None = 0x0905_0000,
    rc_memory_flags: int = MF_COHERENCY | MF_ATTRIBUTES,
    rc_segments: Sequence[int] = (0,),
    oem_revision: int = 1,
    revision: int = 3,
) -> bytes:
    """An IORT shaped like the one QEMU's virt machine builds (build_iort in virt-acpi-build.c).

    An ITS group, an SMMUv3 node (unless ``smmu_base`` is None) and one root complex node per
    segment whose RIDs 0..0xffff map to the SMMU (or straight to the ITS).
    """
    header_end = HEADER_SIZE + _IORT_FIELDS.size
    its = _node(TYPE_ITS_GROUP, 1, 0, struct.pack("<II", 1, 0), ())
    nodes = [its]
    its_offset = header_end
    target = its_offset
    if smmu_base is not None:
        smmu_offset = header_end + len(its)
        body = struct.pack("<QIIQIIIIIII", smmu_base, 1, 0, 0, 0, 74, 75, 77, 76, 0, 0)
        nodes.append(_node(TYPE_SMMU_V3, 4, 1, body, (IdMapping(0, 0xFFFF, 0, its_offset, 0),)))
        target = smmu_offset
    for index, segment in enumerate(rc_segments):
        body = struct.pack("<IBHBIIB3s", 1, 0, 0, rc_memory_flags, 0, segment, 64, bytes(3))
        mapping = IdMapping(0, 0xFFFF, 0, target, 0)
        nodes.append(_node(TYPE_ROOT_COMPLEX, 3, 2 + index, body, (mapping,)))
    fields = _IORT_FIELDS.pack(len(nodes), header_end, 0)
    return build_table(SIGNATURE, fields + b"".join(nodes), revision=revision,
                       oem_revision=oem_revision)  # fmt: skip
