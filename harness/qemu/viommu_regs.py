"""The vIOMMU's own registers and memory-resident queues, read from the host over QMP.

Read-only by construction: registers are read with HMP ``xp`` (which dispatches MMIO reads
to the emulated device), ring memory with QMP ``pmemsave`` into a private scratch
directory (or ``xp`` when none is given); nothing is ever written to the guest.  The MMIO
window is found in the machine's own memory map (``info mtree -f``: QEMU names the
SMMUv3's region ``arm-smmuv3`` — virt's and a user-created one alike — and VT-d's
``intel_iommu``), never assumed.

Checked on QEMU 10.0.2: ``xp /1wx`` reads every 32-bit register; a 64-bit ``xp /1gx``
works only on the registers QEMU implements as 64-bit (``*_BASE``, VT-d's quadword
registers) — QEMU's SMMUv3 answers 0 to an 8-byte read of a 32-bit register, so each
register is read at its own width.

A snapshot is consistent when the VM is paused while it is taken: ``pause=True`` stops a
running VM with ``stop`` and resumes it with ``cont`` (the guest sees only a short stall).
The guest kernel consumes both SMMUv3 queues as soon as the SMMU produces into them, so
records are read where they stay: the slots before PROD.  A *window* is what the hardware
produced between two snapshots (``produced_since``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.errors import DecodeError, HarnessError
from harness.smmuv3.cmdq import LAYOUTS, decode_command
from harness.smmuv3.events import decode_event
from harness.vtd.context import ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry
from harness.vtd.faults import FaultRecord
from harness.vtd.invalidation import decode_invalidation
from harness.vtd.pasid import PasidDirEntry, PasidEntry, pasid_index
from harness.vtd.registers import Cap

SMMU_REGION_NAMES = ("arm-smmuv3", "smmuv3")
VTD_REGION_NAMES = ("intel_iommu",)

# SMMUv3 register offsets (SMMUv3 spec 6.3; arm-smmu-v3.h ARM_SMMU_*; page 1 is +0x10000)
SMMU_IDR0 = 0x00
SMMU_IDR1 = 0x04
SMMU_IIDR = 0x18
SMMU_AIDR = 0x1C
SMMU_CR0 = 0x20
SMMU_GERROR = 0x60
SMMU_GERRORN = 0x64
SMMU_STRTAB_BASE = 0x80
SMMU_STRTAB_BASE_CFG = 0x88
SMMU_CMDQ_BASE = 0x90
SMMU_CMDQ_PROD = 0x98
SMMU_CMDQ_CONS = 0x9C
SMMU_EVTQ_BASE = 0xA0
SMMU_EVTQ_PROD = 0x100A8
SMMU_EVTQ_CONS = 0x100AC
Q_BASE_ADDR_MASK = ((1 << 52) - 1) & ~0x1F  # Q_BASE_ADDR_MASK GENMASK_ULL(51, 5)
Q_BASE_LOG2SIZE_MASK = 0x1F
Q_OVF = 1 << 31
CMDQ_CONS_ERR_SHIFT = 24
CMDQ_CONS_ERR_MASK = 0x7F
CMDQ_ENTRY = 16
EVTQ_ENTRY = 32
STRTAB_BASE_ADDR_MASK = ((1 << 52) - 1) & ~0x3F
STRTAB_FMT_2LVL = 1
STE_SIZE = 64
L1_DESC_SIZE = 8
L1_DESC_L2PTR_MASK = ((1 << 52) - 1) & ~0x3F

# VT-d register offsets (VT-d spec 11.4; intel iommu.h DMAR_*_REG)
VTD_CAP = 0x08
VTD_ECAP = 0x10
VTD_GSTS = 0x1C
VTD_FSTS = 0x34
VTD_IQH = 0x80
VTD_IQT = 0x88
VTD_IQA = 0x90
VTD_PQH = 0xC0
VTD_PQT = 0xC8
VTD_PQA = 0xD0
VTD_PRS = 0xDC
VTD_RTADDR = 0x20
VTD_RTADDR_TTM_SHIFT = 10  # RTADDR.TTM (bits 11:10): 00 legacy, 01 scalable mode
VTD_GSTS_QIES = 1 << 26
VTD_IQA_DW = 1 << 11
VTD_IQA_QS_MASK = 0x7
VTD_IQ_OFFSET_MASK = 0x7FFF0  # IQH/IQT bits 18:4, a byte offset
VTD_PAGE = 4096

_XP_LINE = re.compile(r"^[0-9a-fA-F]+:\s+((?:0x[0-9a-fA-F]+\s*)+)$")
_MTREE_LINE = re.compile(r"^\s*([0-9a-fA-F]+)-([0-9a-fA-F]+)\s+\(prio [-\d]+, i/o\):\s+(\S+)\s*$")


class ViommuRegsError(HarnessError):
    """The vIOMMU's registers or queue memory could not be read as asked."""


class Monitor(Protocol):
    """A QMP connection (``harness.qemu.qmp.QmpSession`` is one)."""

    def execute(
        self, command: str, args: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> Any: ...


def hmp(mon: Monitor, line: str) -> str:
    """The text HMP answers to ``line`` (through QMP ``human-monitor-command``)."""
    return str(mon.execute("human-monitor-command", {"command-line": line}))


# -- finding the window ----------------------------------------------------------------------


@dataclass(frozen=True)
class MmioWindow:
    """One vIOMMU register window in guest physical address space."""

    kind: str  # "smmuv3" or "vtd"
    base: int
    size: int
    region: str


def parse_mtree(text: str) -> list[MmioWindow]:
    """The vIOMMU register windows in ``info mtree -f`` output, each once, lowest first."""
    found: dict[tuple[int, int], MmioWindow] = {}
    for line in text.splitlines():
        m = _MTREE_LINE.match(line)
        if m is None:
            continue
        name = m.group(3)
        kind = "smmuv3" if name in SMMU_REGION_NAMES else "vtd" if name in VTD_REGION_NAMES else ""
        if not kind:
            continue
        start, end = int(m.group(1), 16), int(m.group(2), 16)
        found.setdefault((start, end), MmioWindow(kind, start, end - start + 1, name))
    return sorted(found.values(), key=lambda w: w.base)


def find_viommus(mon: Monitor) -> list[MmioWindow]:
    """The machine's vIOMMU windows from its memory map; ViommuRegsError when it has none."""
    windows = parse_mtree(hmp(mon, "info mtree -f"))
    if not windows:
        raise ViommuRegsError(
            "no vIOMMU register window in 'info mtree -f' "
            f"(looked for regions named {', '.join(SMMU_REGION_NAMES + VTD_REGION_NAMES)})"
        )
    return windows


# -- reading ---------------------------------------------------------------------------------


def parse_xp(text: str, count: int) -> list[int]:
    """The values an ``xp /N?x`` answer shows; ViommuRegsError for anything else."""
    values: list[int] = []
    for line in text.strip().splitlines():
        m = _XP_LINE.match(line.strip())
        if m is None:
            raise ViommuRegsError(f"xp: unexpected answer {text.strip()[:120]!r}")
        values.extend(int(v, 16) for v in m.group(1).split())
    if len(values) != count:
        raise ViommuRegsError(f"xp: wanted {count} values, got {len(values)}: {text[:120]!r}")
    return values


class Reader:
    """Reads guest physical memory and MMIO through one monitor; never writes."""

    def __init__(self, mon: Monitor, scratch: Path | None = None) -> None:
        #: where ``pmemsave`` may write its dump files (private: 0700); None: use ``xp``
        self.mon = mon
        self.scratch = scratch
        self.bytes_read = 0

    def u32(self, address: int) -> int:
        """One 32-bit read (an MMIO register at its own width)."""
        return parse_xp(hmp(self.mon, f"xp /1wx {address:#x}"), 1)[0]

    def u64(self, address: int) -> int:
        """One 64-bit read."""
        return parse_xp(hmp(self.mon, f"xp /1gx {address:#x}"), 1)[0]

    def memory(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest RAM at ``address`` (pmemsave with a scratch dir, else xp)."""
        if size <= 0:
            return b""
        self.bytes_read += size
        if self.scratch is None:
            return self._memory_xp(address, size)
        with tempfile.NamedTemporaryFile(dir=self.scratch, prefix="pmem-", delete=False) as tmp:
            path = Path(tmp.name)
        try:
            self.mon.execute("pmemsave", {"val": address, "size": size, "filename": str(path)})
            data = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        if len(data) != size:
            raise ViommuRegsError(f"pmemsave {address:#x}+{size:#x}: got {len(data)} bytes")
        return data

    def _memory_xp(self, address: int, size: int) -> bytes:
        start, end = address & ~7, (address + size + 7) & ~7
        out = bytearray()
        chunk = 512  # quadwords per xp call
        for at in range(start, end, chunk * 8):
            n = min(chunk, (end - at) // 8)
            out += b"".join(
                v.to_bytes(8, "little") for v in parse_xp(hmp(self.mon, f"xp /{n}gx {at:#x}"), n)
            )
        return bytes(out[address - start : address - start + size])


@contextlib.contextmanager
def paused(mon: Monitor, pause: bool = True) -> Iterator[bool]:
    """Stop a running VM for the block and resume it after; yields whether it was stopped."""
    if not pause or not mon.execute("query-status").get("running", False):
        yield False
        return
    mon.execute("stop")
    try:
        yield True
    finally:
        mon.execute("cont")


# -- SMMUv3 ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmmuQueue:
    """One SMMUv3 queue as the registers and memory showed it in one snapshot."""

    name: str  # "cmdq" or "evtq"
    base_reg: int
    prod: int
    cons: int
    entry_size: int
    memory: bytes
    """The whole ring, 2^log2size entries (empty when the queue base is unset)."""

    @property
    def log2size(self) -> int:
        return self.base_reg & Q_BASE_LOG2SIZE_MASK

    @property
    def address(self) -> int:
        return self.base_reg & Q_BASE_ADDR_MASK

    @property
    def size(self) -> int:
        return 1 << self.log2size

    def index(self, pointer: int) -> int:
        """The slot a PROD/CONS value points at."""
        return pointer & (self.size - 1)

    def wrap(self, pointer: int) -> int:
        """The wrap bit of a PROD/CONS value."""
        return pointer >> self.log2size & 1

    def entry(self, index: int) -> bytes:
        """The raw bytes of slot ``index``."""
        start = (index % self.size) * self.entry_size
        return self.memory[start : start + self.entry_size]

    def distance(self, old: int, new: int) -> int:
        """Entries produced from pointer ``old`` to ``new`` (wrap bits honoured)."""
        mask = (2 << self.log2size) - 1
        return ((new & mask) - (old & mask)) & mask

    def produced_since(self, earlier: SmmuQueue) -> list[tuple[int, bytes]]:
        """(slot, bytes) of every entry the producer wrote after ``earlier`` was taken.

        DecodeError when the queue moved, was resized, or advanced by more than a lap.
        """
        if (earlier.base_reg, earlier.name) != (self.base_reg, self.name):
            raise DecodeError(
                f"SMMU_{self.name.upper()}_BASE",
                f"changed between snapshots ({earlier.base_reg:#x} -> {self.base_reg:#x})",
            )
        count = self.distance(earlier.prod, self.prod)
        if count > self.size:
            raise DecodeError(f"SMMU_{self.name.upper()}_PROD", "advanced by more than a lap")
        first = self.index(earlier.prod)
        return [((first + i) % self.size, self.entry(first + i)) for i in range(count)]

    def recent(self, count: int) -> list[tuple[int, bytes]]:
        """(slot, bytes) of up to ``count`` slots before PROD that were ever written."""
        if not self.memory:
            return []
        end = self.index(self.prod)
        if not self.wrap(self.prod) and end < count:
            first = 0  # first lap (as far as the registers tell): nothing before slot 0 yet
            count = end
        else:
            count = min(count, self.size)
            first = (end - count) % self.size
        slots = [((first + i) % self.size, self.entry(first + i)) for i in range(count)]
        return [(i, data) for i, data in slots if any(data)]


@dataclass(frozen=True)
class SmmuSnapshot:
    """Registers, CMDQ and EVTQ of one SMMUv3 at one moment."""

    window: MmioWindow
    idr0: int
    idr1: int
    cr0: int
    gerror: int
    strtab_base: int
    strtab_base_cfg: int
    cmdq: SmmuQueue
    evtq: SmmuQueue
    paused: bool = False

    @property
    def cmdq_error(self) -> int:
        """CMDQ_CONS.ERR: 0 when the SMMU consumed every command without error."""
        return self.cmdq.cons >> CMDQ_CONS_ERR_SHIFT & CMDQ_CONS_ERR_MASK

    def registers(self) -> dict[str, str]:
        """Register name to hex value, for reports."""
        return {
            "IDR0": hex(self.idr0),
            "IDR1": hex(self.idr1),
            "CR0": hex(self.cr0),
            "GERROR": hex(self.gerror),
            "STRTAB_BASE": hex(self.strtab_base),
            "STRTAB_BASE_CFG": hex(self.strtab_base_cfg),
            "CMDQ_BASE": hex(self.cmdq.base_reg),
            "CMDQ_PROD": hex(self.cmdq.prod),
            "CMDQ_CONS": hex(self.cmdq.cons),
            "EVTQ_BASE": hex(self.evtq.base_reg),
            "EVTQ_PROD": hex(self.evtq.prod),
            "EVTQ_CONS": hex(self.evtq.cons),
        }


def _smmu_queue(
    reader: Reader, base: int, name: str, regs: tuple[int, int, int], entry: int
) -> SmmuQueue:
    base_reg = reader.u64(base + regs[0])
    prod = reader.u32(base + regs[1])
    cons = reader.u32(base + regs[2])
    address = base_reg & Q_BASE_ADDR_MASK
    size = (1 << (base_reg & Q_BASE_LOG2SIZE_MASK)) * entry
    memory = reader.memory(address, size) if address else b""
    return SmmuQueue(name, base_reg, prod, cons, entry, memory)


def read_smmu(
    reader: Reader, window: MmioWindow, *, pause: bool = True, queues: bool = True
) -> SmmuSnapshot:
    """Snapshot ``window``'s registers and (``queues``) both rings, paused unless told not."""
    if window.kind != "smmuv3":
        raise ViommuRegsError(f"{window.region} at {window.base:#x} is not an SMMUv3")
    b = window.base
    with paused(reader.mon, pause) as was_paused:
        regs = {
            name: reader.u32(b + off)
            for name, off in (("idr0", SMMU_IDR0), ("idr1", SMMU_IDR1), ("cr0", SMMU_CR0),
                              ("gerror", SMMU_GERROR), ("cfg", SMMU_STRTAB_BASE_CFG))
        }  # fmt: skip
        strtab = reader.u64(b + SMMU_STRTAB_BASE)
        if queues:
            cmdq = _smmu_queue(
                reader, b, "cmdq", (SMMU_CMDQ_BASE, SMMU_CMDQ_PROD, SMMU_CMDQ_CONS), CMDQ_ENTRY
            )
            evtq = _smmu_queue(
                reader, b, "evtq", (SMMU_EVTQ_BASE, SMMU_EVTQ_PROD, SMMU_EVTQ_CONS), EVTQ_ENTRY
            )
        else:
            cmdq = SmmuQueue("cmdq", reader.u64(b + SMMU_CMDQ_BASE), reader.u32(b + SMMU_CMDQ_PROD),
                             reader.u32(b + SMMU_CMDQ_CONS), CMDQ_ENTRY, b"")  # fmt: skip
            evtq = SmmuQueue("evtq", reader.u64(b + SMMU_EVTQ_BASE), reader.u32(b + SMMU_EVTQ_PROD),
                             reader.u32(b + SMMU_EVTQ_CONS), EVTQ_ENTRY, b"")  # fmt: skip
    return SmmuSnapshot(
        window, regs["idr0"], regs["idr1"], regs["cr0"], regs["gerror"], strtab, regs["cfg"],
        cmdq, evtq, was_paused,
    )  # fmt: skip


def read_smmu_id_regs(reader: Reader, window: MmioWindow) -> dict[str, int]:
    """IDR0..IDR5, IIDR and AIDR as QEMU exposes them: what the kernel's hw_info copies."""
    regs = {f"IDR{i}": reader.u32(window.base + 4 * i) for i in range(6)}
    regs["IIDR"] = reader.u32(window.base + SMMU_IIDR)
    regs["AIDR"] = reader.u32(window.base + SMMU_AIDR)
    return regs


def smmu_active_errors(reader: Reader, window: MmioWindow) -> int:
    """SMMU_GERROR ^ SMMU_GERRORN: global errors raised and not yet acknowledged."""
    return reader.u32(window.base + SMMU_GERROR) ^ reader.u32(window.base + SMMU_GERRORN)


def read_ste(reader: Reader, snapshot: SmmuSnapshot, sid: int) -> bytes:
    """The 64-byte STE of StreamID ``sid`` (linear or 2-level stream table)."""
    return _read_ste(reader, snapshot.strtab_base, snapshot.strtab_base_cfg, sid)


def read_ste_now(reader: Reader, window: MmioWindow, sid: int) -> bytes:
    """The STE of ``sid`` as the SMMU would fetch it now (two register reads, no snapshot)."""
    base = reader.u64(window.base + SMMU_STRTAB_BASE)
    return _read_ste(reader, base, reader.u32(window.base + SMMU_STRTAB_BASE_CFG), sid)


def _read_ste(reader: Reader, strtab_base: int, cfg: int, sid: int) -> bytes:
    table = strtab_base & STRTAB_BASE_ADDR_MASK
    log2size, split, fmt = cfg & 0x3F, cfg >> 6 & 0x1F, cfg >> 16 & 0x3
    if not table:
        raise ViommuRegsError("SMMU_STRTAB_BASE is unset: the stream table is not programmed")
    if sid >> log2size:
        raise ViommuRegsError(f"SID {sid:#x} beyond the stream table (LOG2SIZE {log2size})")
    if fmt != STRTAB_FMT_2LVL:
        return reader.memory(table + sid * STE_SIZE, STE_SIZE)
    desc = int.from_bytes(reader.memory(table + (sid >> split) * L1_DESC_SIZE, 8), "little")
    span = desc & 0x1F
    l2 = desc & L1_DESC_L2PTR_MASK
    if not span or not l2:
        raise ViommuRegsError(f"SID {sid:#x}: level-1 descriptor {desc:#x} has no level-2 table")
    return reader.memory(l2 + (sid & ((1 << split) - 1)) * STE_SIZE, STE_SIZE)


def ste_s2vmid(ste: bytes) -> int:
    """STE.S2VMID (dword 2, bits 15:0): the VMID the SMMU tags this stream's stage 2 with."""
    return int.from_bytes(ste[16:24], "little") & 0xFFFF


# -- VT-d ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VtdSnapshot:
    """Registers, invalidation queue and fault-recording registers of one VT-d unit."""

    window: MmioWindow
    cap: int
    ecap: int
    gsts: int
    fsts: int
    iqa: int
    iqh: int
    iqt: int
    pqa: int
    pqh: int
    pqt: int
    prs: int
    queue: bytes
    """The whole invalidation queue (empty when queued invalidation is off)."""
    frcd: bytes
    """NFR fault-recording registers, 16 bytes each."""
    prq: bytes = b""
    paused: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def descriptor_size(self) -> int:
        """16 (128-bit descriptors) or 32 (IQA.DW: 256-bit)."""
        return 32 if self.iqa & VTD_IQA_DW else 16

    @property
    def queue_entries(self) -> int:
        return (VTD_PAGE << (self.iqa & VTD_IQA_QS_MASK)) // self.descriptor_size

    def slot(self, offset_reg: int) -> int:
        """The descriptor slot an IQH/IQT value points at."""
        return (offset_reg & VTD_IQ_OFFSET_MASK) // self.descriptor_size

    def descriptor(self, slot: int) -> bytes:
        size = self.descriptor_size
        start = (slot % self.queue_entries) * size
        return self.queue[start : start + size]

    def produced_since(self, earlier: VtdSnapshot) -> list[tuple[int, bytes]]:
        """(slot, bytes) of the descriptors software queued after ``earlier`` (IQT moved).

        At most one lap: a queue that went round more than once between the snapshots
        looks like one that moved less.
        """
        if earlier.iqa != self.iqa:
            raise DecodeError("IQA_REG", f"changed between snapshots ({earlier.iqa:#x} -> "
                              f"{self.iqa:#x})")  # fmt: skip
        first, last = earlier.slot(earlier.iqt), self.slot(self.iqt)
        count = (last - first) % self.queue_entries
        return [
            ((first + i) % self.queue_entries, self.descriptor(first + i)) for i in range(count)
        ]

    def recent(self, count: int) -> list[tuple[int, bytes]]:
        """(slot, bytes) of up to ``count`` descriptors before IQT that were ever written."""
        if not self.queue:
            return []
        end = self.slot(self.iqt)
        count = min(count, self.queue_entries)
        slots = [((end - count + i) % self.queue_entries, self.descriptor(end - count + i))
                 for i in range(count)]  # fmt: skip
        return [(i, data) for i, data in slots if any(data)]

    def registers(self) -> dict[str, str]:
        """Register name to hex value, for reports."""
        return {
            "CAP": hex(self.cap), "ECAP": hex(self.ecap), "GSTS": hex(self.gsts),
            "FSTS": hex(self.fsts), "IQA": hex(self.iqa), "IQH": hex(self.iqh),
            "IQT": hex(self.iqt), "PQA": hex(self.pqa), "PQH": hex(self.pqh),
            "PQT": hex(self.pqt), "PRS": hex(self.prs),
        }  # fmt: skip


def frcd_layout(cap: int) -> tuple[int, int]:
    """(offset of FRCD 0 from the register base, NFR) from CAP.FRO and CAP.NFR."""
    decoded = Cap.decode(cap)
    return decoded.fro * 16, decoded.nfr + 1


def read_vtd(reader: Reader, window: MmioWindow, *, pause: bool = True) -> VtdSnapshot:
    """Snapshot ``window``'s registers, invalidation queue, FRCDs and (when on) the PRQ."""
    if window.kind != "vtd":
        raise ViommuRegsError(f"{window.region} at {window.base:#x} is not a VT-d unit")
    b = window.base
    notes: list[str] = []
    with paused(reader.mon, pause) as was_paused:
        cap, ecap = reader.u64(b + VTD_CAP), reader.u64(b + VTD_ECAP)
        gsts, fsts = reader.u32(b + VTD_GSTS), reader.u32(b + VTD_FSTS)
        iqa, iqh, iqt = reader.u64(b + VTD_IQA), reader.u64(b + VTD_IQH), reader.u64(b + VTD_IQT)
        pqa, pqh, pqt = reader.u64(b + VTD_PQA), reader.u64(b + VTD_PQH), reader.u64(b + VTD_PQT)
        prs = reader.u32(b + VTD_PRS)
        queue = b""
        if gsts & VTD_GSTS_QIES:
            queue = reader.memory(iqa & ~0xFFF, VTD_PAGE << (iqa & VTD_IQA_QS_MASK))
        else:
            notes.append("queued invalidation is off (GSTS.QIES clear)")
        offset, nfr = frcd_layout(cap)
        if offset + nfr * 16 > window.size:
            raise ViommuRegsError(
                f"CAP.FRO/NFR put the fault records at {offset:#x}+{nfr * 16:#x}, "
                f"outside the {window.size:#x}-byte window"
            )
        frcd = b"".join(
            reader.u64(b + offset + i * 8).to_bytes(8, "little") for i in range(2 * nfr)
        )
        prq = b""
        if pqa & ~0xFFF:
            prq = reader.memory(pqa & ~0xFFF, VTD_PAGE << (pqa & 0x7))
        else:
            notes.append("no page request queue (PQA unset)")
    return VtdSnapshot(window, cap, ecap, gsts, fsts, iqa, iqh, iqt, pqa, pqh, pqt, prs,
                       queue, frcd, prq, was_paused, tuple(notes))  # fmt: skip


@dataclass(frozen=True)
class VtdDeviceEntry:
    """Where a VT-d unit translates one requester: its domain id and how it got there."""

    sid: int
    scalable: bool
    did: int
    pgtt: int | None = None
    """Scalable mode: the PASID entry's PGTT (1 first stage, 2 second, 3 nested, 4 PT)."""


def read_vtd_device(reader: Reader, window: MmioWindow, sid: int, pasid: int = 0) -> VtdDeviceEntry:
    """Walk the unit's root table (RTADDR) to ``sid``'s context entry and, in scalable mode,
    its PASID entry for ``pasid`` (the kernel's IOMMU_NO_PASID is 0): the domain id the
    hardware tags that requester's translations and invalidations with.

    ViommuRegsError when an entry on the way is not present (nothing attached).
    """
    rtaddr = reader.u64(window.base + VTD_RTADDR)
    table = rtaddr & ~0xFFF
    bus, devfn = sid >> 8, sid & 0xFF
    where = f"SID {sid:#06x}"
    if (rtaddr >> VTD_RTADDR_TTM_SHIFT) & 3 == 0:
        root = RootEntry.decode(reader.memory(table + bus * 16, 16))
        if not root.present:
            raise ViommuRegsError(f"{where}: root entry of bus {bus} not present")
        context = ContextEntry.decode(reader.memory(root.context_table + devfn * 16, 16))
        if not context.present:
            raise ViommuRegsError(f"{where}: context entry not present")
        return VtdDeviceEntry(sid, False, context.did)
    sm_root = ScalableRootEntry.decode(reader.memory(table + bus * 16, 16))
    upper = devfn >= 128
    present = sm_root.upper_present if upper else sm_root.lower_present
    pointer = sm_root.upper_context_table if upper else sm_root.lower_context_table
    if not present:
        raise ViommuRegsError(f"{where}: scalable root entry of bus {bus} not present")
    sm_context = ScalableContextEntry.decode(reader.memory(pointer + (devfn % 128) * 32, 32))
    if not sm_context.present:
        raise ViommuRegsError(f"{where}: scalable context entry not present")
    dir_index, table_index = pasid_index(pasid)
    directory = PasidDirEntry.decode(reader.memory(sm_context.pasid_dir + dir_index * 8, 8))
    if not directory.present:
        raise ViommuRegsError(f"{where}: PASID directory entry for PASID {pasid} not present")
    entry = PasidEntry.decode(reader.memory(directory.table + table_index * 64, 64))
    if not entry.present:
        raise ViommuRegsError(f"{where}: PASID entry {pasid} not present")
    return VtdDeviceEntry(sid, True, entry.did, entry.pgtt)


# -- decoding into one-line records ------------------------------------------------------------


def _fields(obj: Any, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The non-default dataclass fields of a decoded record, hex for ints."""
    out: dict[str, Any] = {}
    for item in dataclasses.fields(obj):
        if item.name in skip or item.name.startswith("_"):
            continue
        value = getattr(obj, item.name)
        if value in (None, False, 0, ()) and item.name != "sid":
            continue
        out[item.name] = (
            hex(value) if isinstance(value, int) and not isinstance(value, bool) else value
        )
    return out


def command_record(slot: int, data: bytes) -> dict[str, Any]:
    """One CMDQ entry as a record: slot, name and fields (or the decode error and raw bytes)."""
    try:
        cmd = decode_command(data)
    except DecodeError as error:
        return {"queue": "cmdq", "slot": slot, "error": str(error), "raw": data.hex()}
    skip = ("opcode",) if "sid" in LAYOUTS[cmd.opcode].by_name else ("opcode", "sid")
    return {"queue": "cmdq", "slot": slot, "name": cmd.name, **_fields(cmd, skip)}


def event_record(slot: int, data: bytes) -> dict[str, Any]:
    """One EVTQ record (decoded leniently: QEMU sets some RES0 bits, see harness.smmuv3)."""
    try:
        event = decode_event(data, strict=False)
    except DecodeError as error:
        return {"queue": "evtq", "slot": slot, "error": str(error), "raw": data.hex()}
    return {
        "queue": "evtq", "slot": slot, "name": event.name,
        **_fields(event, ("event_id", "name", "raw", "rnw")),
        **({} if event.rnw is None else {"access": "read" if event.rnw else "write"}),
    }  # fmt: skip


def invalidation_record(slot: int, data: bytes) -> dict[str, Any]:
    """One invalidation-queue descriptor as a record."""
    try:
        desc = decode_invalidation(data)
    except DecodeError as error:
        return {"queue": "iq", "slot": slot, "error": str(error), "raw": data.hex()}
    return {"queue": "iq", "slot": slot, "name": type(desc).__name__, **_fields(desc)}


def fault_records(snapshot: VtdSnapshot) -> list[dict[str, Any]]:
    """Every FRCD whose F bit is set, as records."""
    out = []
    for index in range(len(snapshot.frcd) // 16):
        data = snapshot.frcd[index * 16 : index * 16 + 16]
        if not data[15] & 0x80:
            continue
        try:
            record = FaultRecord.decode(data)
        except DecodeError as error:
            out.append({"queue": "frcd", "slot": index, "error": str(error), "raw": data.hex()})
            continue
        out.append({"queue": "frcd", "slot": index, "name": "fault", **_fields(record)})
    return out
