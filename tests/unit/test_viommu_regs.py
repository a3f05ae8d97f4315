"""The host-side vIOMMU queue reader against a fake monitor that answers like QEMU 10.0.2.

The fake keeps MMIO registers at their own width (QEMU's SMMUv3 answers 0 to an 8-byte
read of a 32-bit register, so a reader that reads at the wrong width sees zeros) and guest
RAM as bytes; it refuses every command that could write (the reader must never send one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.commands import rings as rings_cmd
from harness.qemu.viommu_regs import (
    SMMU_CMDQ_BASE,
    SMMU_CMDQ_CONS,
    SMMU_CMDQ_PROD,
    SMMU_EVTQ_BASE,
    SMMU_EVTQ_CONS,
    SMMU_EVTQ_PROD,
    SMMU_IDR0,
    SMMU_STRTAB_BASE,
    SMMU_STRTAB_BASE_CFG,
    VTD_CAP,
    VTD_FSTS,
    VTD_GSTS,
    VTD_GSTS_QIES,
    VTD_IQA,
    VTD_IQH,
    VTD_IQT,
    VTD_PQA,
    VTD_PQH,
    VTD_PQT,
    VTD_RTADDR,
    Reader,
    ViommuRegsError,
    VtdDeviceEntry,
    find_viommus,
    parse_mtree,
    parse_xp,
    read_smmu,
    read_ste,
    read_vtd,
    read_vtd_device,
    ste_s2vmid,
)
from harness.rings import ExpectedFault
from harness.rings.veventq import VEvent
from harness.scenarios.hw_queues import (
    SmmuQueueReader,
    cmdq_invalidation_rows,
    context_from_hardware,
    evtq_veventq_rows,
    evtq_window_verdict,
    frcd_for,
    predicted_cmdq,
    unmap_invalidation_rows,
)
from harness.smmuv3 import VsmmuContext, encode_event, make_command
from harness.vtd.context import ContextEntry, RootEntry, ScalableContextEntry, ScalableRootEntry
from harness.vtd.faults import FaultRecord
from harness.vtd.invalidation import InvalidationWait, IotlbInvalidation, PasidIotlbInvalidation
from harness.vtd.pasid import PasidDirEntry, PasidEntry
from harness.vtd.registers import Cap

pytestmark = pytest.mark.tier0

# as QEMU 10.0.2 prints them (virt,iommu=smmuv3 and q35 + intel-iommu), abridged
MTREE_VIRT = """\
FlatView #0
 AS "memory", root: system
 Root memory region: system
  0000000000000000-0000000003ffffff (prio 0, romd): virt.flash0
  0000000009050000-000000000906ffff (prio 0, i/o): arm-smmuv3
  0000000040000000-000000007fffffff (prio 0, ram): mach-virt.ram
FlatView #1
 AS "smmuv3-iommu-memory-region-0-0", root: smmuv3-iommu-memory-region-0-0
  0000000000000000-ffffffffffffffff (prio 0, i/o): smmuv3-iommu-memory-region-0-0
"""
MTREE_Q35 = """\
FlatView #0
 Root memory region: system
  00000000fed90000-00000000fed9022f (prio 0, i/o): intel_iommu
FlatView #3
 Root memory region: vtd-nodmar
  00000000fed90000-00000000fed9022f (prio 0, i/o): intel_iommu
  00000000fed90000-00000000fed9022f (prio 0, i/o): intel_iommu
"""
SMMU = 0x9050000
VTD = 0xFED90000
RAM = 0x4000_0000
CMDQ_AT, EVTQ_AT, STRTAB_AT, L2_AT = RAM + 0x10000, RAM + 0x20000, RAM + 0x30000, RAM + 0x31000
VSID, PSID, VMID = 0x42, 0x18, 0x3
_XP = re.compile(r"^xp /(\d+)([wg])x (0x[0-9a-f]+)$")
READ_ONLY = {"human-monitor-command", "pmemsave", "query-status", "stop", "cont"}


class FakeQemu:
    """Answers the reader's commands; MMIO registers at their own width, RAM as bytes."""

    def __init__(self, mtree: str, regs: Mapping[int, tuple[int, int]], running: bool = True):
        self.mtree = mtree
        self.regs = dict(regs)  # address -> (value, width in bytes)
        self.ram = bytearray(0x40000)
        self.running = running
        self.log: list[tuple[str, Any]] = []

    def poke(self, address: int, data: bytes) -> None:
        self.ram[address - RAM : address - RAM + len(data)] = data

    def _read(self, address: int, width: int) -> int:
        if address in self.regs:
            value, reg_width = self.regs[address]
            return value if reg_width == width else 0  # QEMU's RAZ for a wrong-width read
        if RAM <= address < RAM + len(self.ram):
            return int.from_bytes(self.ram[address - RAM : address - RAM + width], "little")
        return 0

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: float = 30.0
    ) -> Any:
        args = dict(arguments or {})
        self.log.append((command, args))
        assert command in READ_ONLY, f"the reader sent {command}"
        if command == "query-status":
            return {"running": self.running, "status": "running" if self.running else "paused"}
        if command in ("stop", "cont"):
            self.running = command == "cont"
            return {}
        if command == "pmemsave":
            start = args["val"] - RAM
            Path(args["filename"]).write_bytes(bytes(self.ram[start : start + args["size"]]))
            return {}
        line = args["command-line"]
        if line == "info mtree -f":
            return self.mtree
        m = _XP.match(line)
        assert m is not None, f"the reader sent HMP {line!r}"
        count, width, address = int(m.group(1)), 4 if m.group(2) == "w" else 8, int(m.group(3), 16)
        values = [self._read(address + i * width, width) for i in range(count)]
        digits = 2 * width
        return "".join(
            f"{address + i * width:016x}: 0x{v:0{digits}x}\r\n" for i, v in enumerate(values)
        )


def _cmd(name: str, **fields: Any) -> bytes:
    return make_command(name, **fields).encode()


def smmu_machine(cmd_log2: int = 4, evt_log2: int = 3) -> FakeQemu:
    regs = {
        SMMU + SMMU_IDR0: (0x0D44101B, 4),
        SMMU + 0x04: (0x02730010, 4),
        SMMU + 0x20: (0xD, 4),
        SMMU + 0x60: (0, 4),
        SMMU + SMMU_STRTAB_BASE: (STRTAB_AT, 8),
        SMMU + SMMU_STRTAB_BASE_CFG: (1 << 16 | 8 << 6 | 16, 4),  # 2-level, SPLIT 8, 2^16 SIDs
        SMMU + SMMU_CMDQ_BASE: (CMDQ_AT | cmd_log2, 8),
        SMMU + SMMU_CMDQ_PROD: (0, 4),
        SMMU + SMMU_CMDQ_CONS: (0, 4),
        SMMU + SMMU_EVTQ_BASE: (EVTQ_AT | evt_log2, 8),
        SMMU + SMMU_EVTQ_PROD: (0, 4),
        SMMU + SMMU_EVTQ_CONS: (0, 4),
    }
    qemu = FakeQemu(MTREE_VIRT, regs)
    qemu.poke(STRTAB_AT, (L2_AT | 9).to_bytes(8, "little"))  # L1 desc for SIDs 0..255, span 9
    ste = bytearray(64)
    ste[16:24] = (VMID | 0xABC << 32).to_bytes(8, "little")
    qemu.poke(L2_AT + PSID * 64, bytes(ste))
    return qemu


def _produce(qemu: FakeQemu, regs: tuple[int, int], base: int, size: int, entries: list[bytes],
             log2: int) -> None:  # fmt: skip
    """Write ``entries`` at PROD of the queue whose PROD/CONS are ``regs``; CONS catches up."""
    prod_reg, cons_reg = regs
    prod = qemu.regs[SMMU + prod_reg][0]
    wrap = (2 << log2) - 1
    for data in entries:
        qemu.poke(base + (prod & ((1 << log2) - 1)) * size, data)
        prod = (prod + 1) & wrap
    qemu.regs[SMMU + prod_reg] = (prod, 4)
    qemu.regs[SMMU + cons_reg] = (prod, 4)


def produce_commands(qemu: FakeQemu, commands: list[bytes], log2: int = 4) -> None:
    """Write ``commands`` at PROD as the guest kernel would; the SMMU consumes them all."""
    _produce(qemu, (SMMU_CMDQ_PROD, SMMU_CMDQ_CONS), CMDQ_AT, 16, commands, log2)


def produce_events(qemu: FakeQemu, records: list[bytes], log2: int = 3) -> None:
    """The SMMU writes ``records`` at PROD; the guest drains them (CONS catches up)."""
    _produce(qemu, (SMMU_EVTQ_PROD, SMMU_EVTQ_CONS), EVTQ_AT, 32, records, log2)


# -- finding the window and reading ---------------------------------------------------------


def test_mtree_windows_each_once() -> None:
    (smmu,) = parse_mtree(MTREE_VIRT)
    assert (smmu.kind, smmu.base, smmu.size) == ("smmuv3", SMMU, 0x20000)
    (vtd,) = parse_mtree(MTREE_Q35)
    assert (vtd.kind, vtd.base, vtd.size) == ("vtd", VTD, 0x230)


def test_no_viommu_is_a_clear_error() -> None:
    qemu = FakeQemu("FlatView #0\n  0000000040000000-000000007fffffff (prio 0, ram): ram\n", {})
    with pytest.raises(ViommuRegsError, match="no vIOMMU register window"):
        find_viommus(qemu)


def test_parse_xp() -> None:
    assert parse_xp("0000000009050000: 0x0d44101b\r\n", 1) == [0x0D44101B]
    text = "40000000: 0x0000000000000001 0x0000000000000002\r\n40000010: 0x0000000000000003\r\n"
    assert parse_xp(text, 3) == [1, 2, 3]
    with pytest.raises(ViommuRegsError, match="unexpected answer"):
        parse_xp("Cannot access memory\r\n", 1)
    with pytest.raises(ViommuRegsError, match="wanted 2 values"):
        parse_xp("0: 0x1\r\n", 2)


def test_registers_read_at_their_width_and_the_vm_is_resumed(tmp_path: Path) -> None:
    qemu = smmu_machine()
    snap = read_smmu(Reader(qemu, tmp_path), parse_mtree(MTREE_VIRT)[0])
    assert snap.idr0 == 0x0D44101B  # a 64-bit read would have seen QEMU's RAZ 0
    assert (snap.cmdq.log2size, snap.cmdq.address, len(snap.cmdq.memory)) == (4, CMDQ_AT, 256)
    assert (snap.evtq.log2size, len(snap.evtq.memory)) == (3, 256)
    assert snap.paused and qemu.running
    names = [c for c, _ in qemu.log]
    assert names[1] == "stop" and names[-1] == "cont"
    assert list(tmp_path.iterdir()) == []  # pmemsave dumps removed


def test_a_paused_vm_stays_paused(tmp_path: Path) -> None:
    qemu = smmu_machine()
    qemu.running = False
    snap = read_smmu(Reader(qemu, tmp_path), parse_mtree(MTREE_VIRT)[0])
    assert not snap.paused and not qemu.running
    assert "stop" not in [c for c, _ in qemu.log] and "cont" not in [c for c, _ in qemu.log]


def test_xp_and_pmemsave_read_the_same_bytes(tmp_path: Path) -> None:
    qemu = smmu_machine()
    qemu.poke(RAM + 0x1003, bytes(range(200)))
    by_xp = Reader(qemu).memory(RAM + 0x1003, 200)
    by_dump = Reader(qemu, tmp_path).memory(RAM + 0x1003, 200)
    assert by_xp == by_dump == bytes(range(200))


def test_two_level_stream_table_ste(tmp_path: Path) -> None:
    qemu = smmu_machine()
    reader = Reader(qemu, tmp_path)
    snap = read_smmu(reader, parse_mtree(MTREE_VIRT)[0], queues=False)
    assert ste_s2vmid(read_ste(reader, snap, PSID)) == VMID
    with pytest.raises(ViommuRegsError, match="no level-2 table"):
        read_ste(reader, snap, 0x100)  # L1 descriptor 1 is empty


# -- CMDQ effect rows -------------------------------------------------------------------------

USER = [
    {"name": "CFGI_CD", "fields": {"sid": VSID, "leaf": True}},
    {"name": "TLBI_NH_VA", "fields": {"asid": 0x21, "address": 0x3000_0000, "leaf": True}},
]


def kernel_commands(sid: int = PSID, vmid: int = VMID, sync: bool = True) -> list[bytes]:
    """What a correct 7.3 kernel writes for USER: vSID -> SID, VMID forced, CMD_SYNC."""
    out = [
        _cmd("CFGI_CD", sid=sid, leaf=True),
        _cmd("TLBI_NH_VA", vmid=vmid, asid=0x21, address=0x3000_0000, leaf=True),
    ]
    return [*out, _cmd("CMD_SYNC", cs=1)] if sync else out


def _rows_for(written: list[bytes], ctx_sid: int = PSID, tmp: Path | None = None,
              before_commands: int = 13) -> list[Any]:  # fmt: skip
    qemu = smmu_machine()
    produce_commands(qemu, [_cmd("TLBI_NH_ALL", vmid=1)] * before_commands)
    hw = SmmuQueueReader(qemu, tmp or Path("."))
    before = hw.snapshot()
    produce_commands(qemu, written)  # wraps the 16-entry queue from slot 13
    after = hw.snapshot()
    ctx = context_from_hardware(VsmmuContext(vsid_to_sid={VSID: ctx_sid}), hw, after, PSID)
    assert ctx.vmid == VMID
    return cmdq_invalidation_rows("case", USER, ctx, before, after, physical_sid=PSID)


def test_cmdq_rows_pass_for_the_right_conversion_across_a_wrap(tmp_path: Path) -> None:
    rows = _rows_for(kernel_commands(), tmp=tmp_path)
    assert [r.kind for r in rows] == ["effect"] * 3
    assert all(r.ok for r in rows), [(r.name, r.expected, r.got) for r in rows]
    assert rows[0].got[-1] == "CMD_SYNC" and "sid=0x18" in rows[0].got[0]


def test_cmdq_row_trips_when_the_expectation_is_the_virtual_sid(tmp_path: Path) -> None:
    """Mutation: the reader expecting the vSID must fail against a correct kernel."""
    rows = _rows_for(kernel_commands(), ctx_sid=VSID, tmp=tmp_path)
    failed = {r.name for r in rows if not r.ok}
    assert "case: CMDQ holds the kernel's converted commands, then CMD_SYNC" in failed
    assert any("physical SID" in name for name in failed)


@pytest.mark.parametrize(
    "written",
    [
        pytest.param(kernel_commands(sid=VSID), id="kernel-left-the-vsid"),
        pytest.param(kernel_commands(vmid=0), id="kernel-lost-the-vmid"),
        pytest.param(kernel_commands(sync=False), id="no-cmd-sync"),
        pytest.param(kernel_commands()[1:], id="cfgi-cd-missing"),
    ],
)
def test_cmdq_row_trips_on_a_wrong_conversion(written: list[bytes], tmp_path: Path) -> None:
    rows = _rows_for(written, tmp=tmp_path)
    assert not rows[0].ok


def test_predicted_cmdq_is_empty_for_a_refused_batch() -> None:
    ctx = VsmmuContext(vsid_to_sid={VSID: PSID}, vmid=VMID)
    assert predicted_cmdq([{"name": "CFGI_STE", "fields": {"sid": VSID}}], ctx) == []


# -- EVTQ window --------------------------------------------------------------------------------


def test_evtq_window_matches_the_produced_records(tmp_path: Path) -> None:
    qemu = smmu_machine()
    produce_events(qemu, [encode_event("F_TRANSLATION", sid=PSID, address=0x1000)] * 6)
    hw = SmmuQueueReader(qemu, tmp_path)
    before = hw.snapshot()
    produce_events(qemu, [  # wraps the 8-entry queue
        encode_event("C_BAD_CD", sid=PSID),
        encode_event("F_TRANSLATION", sid=PSID, address=0x8000_0000, is_write=True),
        encode_event("C_BAD_STE", sid=PSID),
    ])  # fmt: skip
    after = hw.snapshot()
    want = [ExpectedFault(sid=PSID, reason="C_BAD_CD"),
            ExpectedFault(sid=PSID, reason="F_TRANSLATION", address=0x8000_0000),
            ExpectedFault(sid=PSID, reason="C_BAD_STE")]  # fmt: skip
    verdict = evtq_window_verdict(before, after, want)
    assert verdict.ok and verdict.records_seen == 3, verdict.summary()
    wrong_sid = [ExpectedFault(sid=VSID, reason="C_BAD_CD")]
    assert not evtq_window_verdict(before, after, wrong_sid).ok


# -- VT-d -------------------------------------------------------------------------------------


def vtd_machine(tmp_nfr: int = 8) -> FakeQemu:
    cap = Cap(nfr=tmp_nfr - 1, fro=0x22, sagaw=4, mgaw=47, nd=2).encode()
    iq_at = RAM + 0x2000
    regs = {
        VTD + VTD_CAP: (cap, 8), VTD + 0x10: (0x880000F00F4A, 8),
        VTD + VTD_GSTS: (VTD_GSTS_QIES, 4), VTD + VTD_FSTS: (0x2 | 1 << 8, 4),  # PPF, FRI 1
        VTD + VTD_IQA: (iq_at | 1 << 11 | 1, 8),  # 256-bit descriptors, 2 pages
        VTD + VTD_IQH: (3 * 32, 8), VTD + VTD_IQT: (3 * 32, 8),
    }  # fmt: skip
    fault = FaultRecord(sid=0x18, address=0x8000000, reason=0x71).encode()
    for half in range(2):
        regs[VTD + 0x220 + 16 + half * 8] = (int.from_bytes(fault[half * 8 : half * 8 + 8],
                                                            "little"), 8)  # fmt: skip
    qemu = FakeQemu(MTREE_Q35.replace("fed9022f", f"{0x220 + 16 * tmp_nfr - 1 + VTD:x}"), regs)
    for slot, desc in enumerate([
        IotlbInvalidation(granularity=3, did=5, address=0x10000, am=1).encode(256),
        bytes(32),  # a slot never written
        IotlbInvalidation(granularity=2, did=5).encode(256),
    ]):  # fmt: skip
        qemu.poke(iq_at + slot * 32, desc)
    return qemu


def test_vtd_queue_and_fault_records(tmp_path: Path) -> None:
    qemu = vtd_machine()
    (window,) = find_viommus(qemu)
    snap = read_vtd(Reader(qemu, tmp_path), window)
    assert (snap.descriptor_size, snap.queue_entries) == (32, 256)
    assert snap.slot(snap.iqt) == 3
    records = rings_cmd.vtd_records(snap, last=8)
    names = [r.get("name") for r in records if r["queue"] == "iq"]
    assert names == [None, "IotlbInvalidation", "IotlbInvalidation"]  # header, 2 written slots
    (fault,) = [r for r in records if r["queue"] == "frcd" and "slot" in r]
    assert (fault["slot"], fault["sid"], fault["reason"]) == (1, "0x18", "0x71")
    (verdict,) = [r for r in records if r.get("check") == "vtd-fault-recording"]
    assert verdict["ok"] and verdict["pending"] == 1


def test_vtd_produced_since(tmp_path: Path) -> None:
    qemu = vtd_machine()
    (window,) = find_viommus(qemu)
    before = read_vtd(Reader(qemu, tmp_path), window)
    desc = IotlbInvalidation(granularity=3, did=7, address=0x20000, am=0).encode(256)
    qemu.poke(RAM + 0x2000 + 3 * 32, desc)
    qemu.regs[VTD + VTD_IQT] = (4 * 32, 8)
    after = read_vtd(Reader(qemu, tmp_path), window)
    assert after.produced_since(before) == [(3, desc)]


def _legacy_tables(qemu: FakeQemu, sid: int, did: int) -> None:
    """RTADDR -> root entry of SID's bus -> context entry with ``did`` (legacy mode)."""
    root, context = RAM + 0x10000, RAM + 0x11000
    qemu.regs[VTD + VTD_RTADDR] = (root, 8)
    qemu.poke(root + (sid >> 8) * 16, RootEntry(present=True, context_table=context).encode())
    qemu.poke(context + (sid & 0xFF) * 16, ContextEntry(present=True, aw=2, did=did).encode())


def _scalable_tables(qemu: FakeQemu, sid: int, did: int) -> None:
    """RTADDR (TTM=01) -> scalable root -> context -> PASID dir -> PASID 0's entry."""
    root, context, directory, table = (RAM + 0x10000 + i * 0x1000 for i in range(4))
    qemu.regs[VTD + VTD_RTADDR] = (root | 1 << 10, 8)
    qemu.poke(
        root + (sid >> 8) * 16,
        ScalableRootEntry(lower_present=True, lower_context_table=context).encode(),
    )
    qemu.poke(
        context + (sid & 0xFF) * 32,
        ScalableContextEntry(present=True, pasid_dir=directory).encode(),
    )
    qemu.poke(directory, PasidDirEntry(present=True, table=table).encode())
    qemu.poke(table, PasidEntry(present=True, pgtt=1, aw=2, did=did).encode())  # fmt: skip


@pytest.mark.parametrize("tables", [_legacy_tables, _scalable_tables])
def test_device_entry_walk(tables: Any, tmp_path: Path) -> None:
    qemu = vtd_machine()
    (window,) = find_viommus(qemu)
    tables(qemu, 0x0108, did=0x2A)  # bus 1: nothing on bus 0
    with pytest.raises(ViommuRegsError, match="bus 0 not present"):
        read_vtd_device(Reader(qemu, tmp_path), window, 0x0008)
    tables(qemu, 0x0008, did=0x2A)
    entry = read_vtd_device(Reader(qemu, tmp_path), window, 0x0008)
    assert entry.did == 0x2A and entry.scalable is (tables is _scalable_tables)


def _unmap_window(qemu: FakeQemu, descriptors: list[bytes], tmp_path: Path) -> tuple[Any, Any]:
    (window,) = find_viommus(qemu)
    before = read_vtd(Reader(qemu, tmp_path), window)
    for i, desc in enumerate(descriptors):
        qemu.poke(RAM + 0x2000 + (3 + i) * 32, desc)
    tail = (3 + len(descriptors)) * 32
    qemu.regs[VTD + VTD_IQT] = qemu.regs[VTD + VTD_IQH] = (tail, 8)
    return before, read_vtd(Reader(qemu, tmp_path), window)


FIRST_STAGE = VtdDeviceEntry(sid=8, scalable=True, did=3, pgtt=1)
WAIT = InvalidationWait(status_write=True).encode(256)


def test_unmap_rows_pass_for_the_kernel_s_descriptors(tmp_path: Path) -> None:
    flush = PasidIotlbInvalidation(granularity=3, did=3, pasid=0, address=0x7654000).encode(256)
    before, after = _unmap_window(vtd_machine(), [flush, WAIT], tmp_path)
    rows = unmap_invalidation_rows("unmap", FIRST_STAGE, 0x7654000, 0, before, after)
    assert all(r.ok for r in rows), rows


@pytest.mark.parametrize(
    "descriptors",
    [
        # the domain id of another domain
        [
            PasidIotlbInvalidation(granularity=3, did=4, pasid=0, address=0x7654000).encode(256),
            WAIT,
        ],
        # a second-stage IOTLB flush for a first-stage domain
        [IotlbInvalidation(granularity=3, did=3, address=0x7654000).encode(256), WAIT],
        # no flush at all (the missing invalidation)
        [WAIT],
        # no wait after it
        [PasidIotlbInvalidation(granularity=3, did=3, pasid=0, address=0x7654000).encode(256)],
    ],
    ids=["wrong-did", "wrong-type", "missing", "no-wait"],
)
def test_unmap_rows_trip(descriptors: list[bytes], tmp_path: Path) -> None:
    before, after = _unmap_window(vtd_machine(), descriptors, tmp_path)
    rows = unmap_invalidation_rows("unmap", FIRST_STAGE, 0x7654000, 0, before, after)
    assert not all(r.ok for r in rows), rows


def test_frcd_for_reads_a_serviced_record(tmp_path: Path) -> None:
    """F cleared by the guest, PV all ones with PP clear (QEMU): still found, and only there."""
    qemu = vtd_machine()
    record = bytearray(FaultRecord(sid=8, address=0x7654000, reason=5).encode())
    high = int.from_bytes(record[8:], "little") & ~(1 << 63) | (0xFFFFF << 40)
    qemu.regs[VTD + 0x220 + 8] = (high, 8)
    qemu.regs[VTD + 0x220] = (int.from_bytes(record[:8], "little"), 8)
    (window,) = find_viommus(qemu)
    snap = read_vtd(Reader(qemu, tmp_path), window)
    found = frcd_for(snap, 0x7654123)
    assert found is not None
    got, fault_bit = found
    assert (got.sid, got.reason, got.is_write, fault_bit) == (8, 5, True, False)
    assert frcd_for(snap, 0x7655000) is None


# -- the CLI's lines ----------------------------------------------------------------------------


def test_cli_prints_one_record_a_line(tmp_path: Path) -> None:
    qemu = smmu_machine()
    produce_commands(qemu, kernel_commands())
    produce_events(qemu, [encode_event("C_BAD_CD", sid=PSID)])
    lines = [rings_cmd.text_line(r) for r in rings_cmd.collect(qemu, last=4, pause=True)]
    assert lines[0].startswith("smmuv3 base=0x9050000")
    assert any("CMD_CFGI_CD" in line and "sid=0x18" in line for line in lines)
    assert any(line.startswith("cmdq") and "CMD_SYNC" in line for line in lines)
    assert any(line.startswith("evtq") and "C_BAD_CD" in line for line in lines)
    assert lines[-1].startswith("evtq   smmu-evtq: ok")


def _vevent(record: bytes, sid: int, sequence: int) -> VEvent:
    word0 = (int.from_bytes(record[:8], "little") & 0xFFFFFFFF) | sid << 32
    return VEvent(0, 0, sequence, word0.to_bytes(8, "little") + record[8:])


EVTQ_RECORDS = [
    encode_event("F_TRANSLATION", sid=PSID, address=0x2000_0000, is_write=True),
    encode_event("F_TRANSLATION", sid=PSID, address=0x8000_0000, is_write=True, stage2=True),
    encode_event("C_BAD_CD", sid=PSID),
]


def test_evtq_and_veventq_agree_record_by_record() -> None:
    forwarded = [EVTQ_RECORDS[0], EVTQ_RECORDS[2]]  # the stage-2 fault is not forwarded
    vevents = [_vevent(r, VSID, i) for i, r in enumerate(forwarded)]
    rows = evtq_veventq_rows("faults", EVTQ_RECORDS, vevents, {PSID: VSID})
    assert all(r.ok and r.kind == "effect" for r in rows), [(r.expected, r.got) for r in rows]


@pytest.mark.parametrize(
    "vevents",
    [
        pytest.param([_vevent(EVTQ_RECORDS[0], PSID, 0), _vevent(EVTQ_RECORDS[2], PSID, 1)],
                     id="physical-sid-leaked"),
        pytest.param([_vevent(EVTQ_RECORDS[0], VSID, 0)], id="one-missing"),
        pytest.param([_vevent(EVTQ_RECORDS[2], VSID, 0), _vevent(EVTQ_RECORDS[0], VSID, 1)],
                     id="reordered"),
        pytest.param([_vevent(r, VSID, i) for i, r in enumerate(EVTQ_RECORDS)],
                     id="stage2-forwarded"),
    ],
)  # fmt: skip
def test_evtq_veventq_row_trips(vevents: list[VEvent]) -> None:
    rows = evtq_veventq_rows("faults", EVTQ_RECORDS, vevents, {PSID: VSID})
    assert not rows[0].ok


# -- the user's monitors on the command line, and where boot --keep points --------------------


def test_user_monitors_on_the_command_line() -> None:
    from harness.qemu.argv import RunEndpoints, build_argv
    from harness.qemu.description import Machine

    machine = Machine(arch="x86_64", kernel=Path("/k/bzImage"), initrd=Path("/k/rootfs.cpio"))
    base = RunEndpoints(Path("/r/qmp.sock"), Path("/r/console.log"), Path("/r/qemu.log"))
    plain = build_argv(machine, base, "tcg")
    assert "-mon" not in plain
    users = RunEndpoints(
        Path("/r/qmp.sock"),
        Path("/r/console.log"),
        Path("/r/qemu.log"),
        user_qmp_socket=Path("/r/qmp-user.sock"),
        hmp_socket=Path("/r/hmp.sock"),
    )
    argv = build_argv(machine, users, "tcg")
    chardevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-chardev"]
    mons = [argv[i + 1] for i, a in enumerate(argv) if a == "-mon"]
    assert "socket,id=mon-control,path=/r/qmp-user.sock,server=on,wait=off" in chardevs
    assert "socket,id=mon-readline,path=/r/hmp.sock,server=on,wait=off" in chardevs
    assert mons == ["chardev=mon-control,mode=control", "chardev=mon-readline,mode=readline"]
    assert argv[argv.index("-qmp") + 1] == "unix:/r/qmp.sock,server=on,wait=off"  # the harness's


def test_boot_prints_the_user_sockets_not_the_harness_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from harness.commands.boot import serve

    run = Path("/run/x")
    vm = SimpleNamespace(
        accel="tcg",
        qmp_socket=run / "qmp.sock",
        user_qmp_socket=run / "qmp-user.sock",
        hmp_socket=run / "hmp.sock",
        console_log=Path("/a/console.log"),
    )
    guest = SimpleNamespace(vm=vm, timings={"boot_to_agent_s": 1.0}, artifacts=Path("/a"),
                            ssh_command=lambda: "ssh ...")  # fmt: skip
    assert serve(guest, None, keep=False) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "qmp:       /run/x/qmp-user.sock" in out and "hmp:       /run/x/hmp.sock" in out
    assert "/run/x/qmp.sock" not in out


def test_reader_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.scenarios.hw_queues import ENV_READER, reader_enabled

    monkeypatch.delenv(ENV_READER, raising=False)
    assert reader_enabled({}) is True
    assert reader_enabled({"hw_queues": False}) is False
    monkeypatch.setenv(ENV_READER, "0")
    assert reader_enabled({}) is False
    assert reader_enabled({"hw_queues": True}) is True


def test_vtd_records_judge_the_page_request_queue(tmp_path: Path) -> None:
    qemu = vtd_machine()
    (window,) = find_viommus(qemu)
    assert not [
        r
        for r in rings_cmd.vtd_records(read_vtd(Reader(qemu, tmp_path), window), 4)
        if r["queue"] == "prq"
    ]  # fmt: skip (no PQA: no queue)
    qemu.regs[VTD + VTD_PQA] = (RAM + 0x8000, 8)  # one page
    qemu.regs[VTD + VTD_PQH] = qemu.regs[VTD + VTD_PQT] = (0x40, 8)
    records = rings_cmd.vtd_records(read_vtd(Reader(qemu, tmp_path), window), 4)
    (header,) = [r for r in records if r["queue"] == "prq" and "address" in r]
    assert (header["bytes"], header["head"]) == (4096, "0x40")
    (verdict,) = [r for r in records if r.get("check") == "vtd-prq"]
    assert verdict["ok"] and verdict["pending"] == 0
    qemu.regs[VTD + VTD_PQT] = (0x41, 8)  # not on a 32-byte boundary: malformed
    (verdict,) = [r for r in rings_cmd.vtd_records(read_vtd(Reader(qemu, tmp_path), window), 4)
                  if r.get("check") == "vtd-prq"]  # fmt: skip
    assert not verdict["ok"]
