"""Tier-2 SMMUv3 scenarios: QEMU's emulated SMMUv3 (stage=nested) under real iommufd nesting.

The guest (arm64, TCG, UEFI + ACPI) binds QEMU's edu device to vfio-pci and drives the
nesting uAPI through ``harness.scenarios.guest.smmuv3``: capabilities against
``harness.smmuv3.predict_idrs``, CD-table binding with DMA verified byte for byte,
invalidation judged by its effect on DMA and by QEMU's trace events, and the vEVENTQ
checked by ``harness.rings``.

A vIOMMU needs the IORT to claim CANWBS (see ``harness.firmware``); ``prepare_smmuv3``
builds the machine with the IORT override, and every scenario but ``smmuv3-capabilities``
fails with one explanatory check when the guest booted without it.  The capability
scenario works both ways: on a stock boot it also caches QEMU's IORT for later overrides.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from harness.agent.client import AgentError
from harness.driver.errors import errno_name
from harness.errors import DecodeError
from harness.firmware.capability import nesting_capability
from harness.firmware.iort import Iort, parse_iort
from harness.firmware.override import (
    IORT_SYSFS,
    cache_root,
    iort_override,
    override_machine,
    store_iort,
)
from harness.guest import Guest
from harness.qemu.description import Machine, SmmuV3
from harness.qemu.trace import TraceRecord, TraceWindow, set_trace_events
from harness.rings import ExpectedFault, VEventQChecker, check_veventq, parse_veventq
from harness.rings.verdict import RingVerdict
from harness.scenarios.base import EFFECT, Check, GuestSpec, Prepared, Verdict, scenario
from harness.scenarios.hw_queues import (
    SmmuQueueReader,
    cmdq_invalidation_rows,
    context_from_hardware,
    evtq_veventq_rows,
    evtq_window_verdict,
    reader_enabled,
    smmu_queue_reader,
)
from harness.scenarios.runner import prepare_hook
from harness.smmuv3 import (
    VsmmuContext,
    check_vsmmu_invalidation_array,
    decode_event,
    decode_id_regs,
    make_command,
    parse_dmesg_events,
    predict_idrs,
)

EDU_ID = (0x1234, 0x11E8)
EDU_MASK = (1 << 48) - 1
VSID = 0x42
IPA_BASE = 0x4000_0000
DATA_OFFSET = 0x200000
DATA_SLOT = 0x10000
TRACE_PATTERNS = (
    "smmuv3_cmdq_*",
    "smmuv3_range_inval",
    "smmuv3_*_event",  # QEMU 10: smmuv3_record_event; 11: smmuv3_propagate_event
    "smmu_iotlb_inv_*",
    "smmu_config_cache_inv",
)
HW_INFO_TYPE_ARM_SMMUV3 = 2
TAINT_OVERRIDDEN_ACPI_TABLE = 8

SPEC = GuestSpec(
    viommu="smmuv3",
    viommu_options={"stage": "nested"},
    devices=(f"edu:mask={EDU_MASK:#x}",),
    firmware="uefi",
)


def _spec(arch: str) -> GuestSpec:
    return SPEC


# -- the IORT override, for callers that build the machine ---------------------------------


def stock_prepared(
    name: str,
    arch: str = "arm64",
    *,
    qemu: str | None = None,
    accel: str = "auto",
    viommu_options: Mapping[str, Any] | None = None,
) -> Any:
    """``runner.Prepared`` for scenario ``name`` (UEFI + ACPI), no override."""
    from harness.scenarios.base import get
    from harness.scenarios.runner import prepare_machine

    return prepare_machine(get(name), arch, qemu=qemu, accel=accel, viommu_options=viommu_options)


def prepare_smmuv3(
    name: str,
    arch: str = "arm64",
    *,
    qemu: str | None = None,
    accel: str = "auto",
    viommu_options: Mapping[str, Any] | None = None,
    override: bool = True,
    log: Callable[[str], None] | None = None,
) -> Any:
    """``runner.Prepared`` for scenario ``name``, with the IORT override unless told not to.

    The override comes from ``harness.firmware.iort_override`` (cached IORT, else one boot
    of the stock machine to read it); its description goes into ``Prepared.image``.
    """
    prepared = stock_prepared(name, arch, qemu=qemu, accel=accel, viommu_options=viommu_options)
    return apply_iort_override(prepared, log) if override else prepared


@prepare_hook("smmuv3-cd-binding", "smmuv3-invalidation", "smmuv3-fault-rings")
def apply_iort_override(prepared: Prepared, log: Callable[[str], None] | None = None) -> Prepared:
    """The prepared machine booting with QEMU's IORT patched to claim CANWBS.

    Registered as the runner's prepare hook of the scenarios that need a vIOMMU, so
    ``harness run``, pytest, avocado and repro all boot them the same way.
    """
    result = iort_override(
        prepared.machine, prepared.binary, ready_marker=prepared.ready_marker, log=log
    )
    image = {**prepared.image, "iort_override": result.describe()}
    return replace(prepared, machine=override_machine(prepared.machine, result), image=image)


def override_active(machine: Machine) -> bool:
    """The machine boots a combined initrd from the firmware cache (an ACPI table upgrade)."""
    return machine.initrd.parent == cache_root() / "initrd"


# -- helpers ---------------------------------------------------------------------------------


def taint_overridden(tainted: int) -> bool:
    """TAINT_OVERRIDDEN_ACPI_TABLE ('A') in /proc/sys/kernel/tainted."""
    return bool(tainted >> TAINT_OVERRIDDEN_ACPI_TABLE & 1)


def bind_edu(guest: Guest, verdict: Verdict) -> tuple[str, str] | None:
    bdfs = guest.call("pci.find", vendor=EDU_ID[0], device=EDU_ID[1])
    verdict.add(Check.equal("edu devices found", 1, len(bdfs)))
    if len(bdfs) != 1:
        return None
    bound = guest.call("pci.bind_vfio", bdf=bdfs[0])["device"]
    verdict.add(Check.equal("edu bound to vfio-pci", "vfio-pci", bound["driver"]))
    cdev = bound.get("vfio_cdev")
    if not cdev:
        verdict.add(Check("edu vfio cdev", "a cdev", None, False))
        return None
    return str(bdfs[0]), str(cdev)


def _guest_iort(guest: Guest) -> tuple[bytes | None, Iort | None, str]:
    try:
        raw = guest.call("system.read_file", path=IORT_SYSFS)
    except AgentError as exc:
        return None, None, str(exc).splitlines()[0]
    try:
        return bytes(raw), parse_iort(bytes(raw)), ""
    except DecodeError as exc:
        return bytes(raw), None, str(exc)


def require_override(guest: Guest, verdict: Verdict) -> bool:
    """A failed check, with the reason, unless the guest's IORT claims CANWBS."""
    _, iort, problem = _guest_iort(guest)
    canwbs = bool(iort and iort.canwbs)
    verdict.facts["iort_override"] = override_active(guest.vm.machine)
    verdict.facts["iort"] = iort.describe() if iort else problem
    with contextlib.suppress(AgentError, ValueError):
        tainted = int(bytes(guest.call("system.read_file", path="/proc/sys/kernel/tainted")))
        verdict.facts["tainted"] = tainted
        verdict.facts["taint_overridden_acpi_table"] = taint_overridden(tainted)
    verdict.add(
        Check(
            "IORT claims CANWBS (override applied)",
            True,
            canwbs,
            canwbs,
            ""
            if canwbs
            else "boot through harness.scenarios.smmuv3.prepare_smmuv3"
            " (IORT override), else IOMMU_VIOMMU_ALLOC is EOPNOTSUPP",
        )
    )
    return canwbs


def _options(machine: Machine) -> dict[str, Any]:
    viommu = machine.viommu
    stage = viommu.stage if isinstance(viommu, SmmuV3) and viommu.stage else "1"
    return {"stage": stage}


def _rows(result: Any) -> list[dict[str, Any]]:
    rows = result.get("rows", []) if isinstance(result, dict) else result
    return list(rows)


def event_summary(data: bytes, limit: int = 12) -> list[str]:
    """vEVENTQ records as ``seq NAME sid=.. addr=..`` lines (LOST for a lost-events header)."""
    lines = []
    try:
        records = parse_veventq(data)
    except DecodeError as exc:
        return [f"unparsable: {exc}"]
    for record in records[:limit]:
        if record.payload is None:
            lines.append(f"{record.sequence} LOST_EVENTS")
            continue
        try:
            event = decode_event(record.payload, strict=False)
        except DecodeError as exc:
            lines.append(f"{record.sequence} undecodable: {exc}")
            continue
        address = "" if event.address is None else f" addr={event.address:#x}"
        lines.append(f"{record.sequence} {event.name} sid={event.sid:#x}{address}")
    if len(records) > limit:
        lines.append(f"... {len(records) - limit} more")
    return lines


def _ring_checks(verdict: Verdict, name: str, ring: RingVerdict) -> None:
    verdict.add(
        Check(
            f"{name}: no loss, duplicates, disorder or mismatch",
            "ok",
            ring.summary(),
            ring.ok,
            kind=EFFECT,
        )
    )


def _wait_trace(
    window: TraceWindow, want: Callable[[list[TraceRecord]], bool], timeout: float = 5.0
) -> list[TraceRecord]:
    """Records since the window opened, polled until ``want`` holds or ``timeout``."""
    deadline = time.monotonic() + timeout
    records = window.records()
    while not want(records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = window.records()
    return records


# -- capabilities ------------------------------------------------------------------------------


@scenario("smmuv3-capabilities", tier=2, arches=("arm64",), guest=_spec, viommu="smmuv3")
def smmuv3_capabilities(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """GET_HW_INFO IDRs vs predict_idrs; nest parent / vIOMMU outcome and its explanation."""
    verdict = Verdict("smmuv3-capabilities")
    bound = bind_edu(guest, verdict)
    if bound is None:
        return verdict
    options = _options(guest.vm.machine)
    caps = guest.call("smmuv3.capabilities", cdev=bound[1])
    verdict.add(Check.effect("hw_info type", HW_INFO_TYPE_ARM_SMMUV3, caps["hw_info_type"]))
    got = {k: int(v) for k, v in caps["idrs"].items()}
    predicted = predict_idrs(options)
    for reg in ("IDR0", "IDR1", "IDR2", "IDR3", "IDR4", "IDR5", "IIDR", "AIDR"):
        verdict.add(
            Check(
                f"{reg} as predicted for stage={options['stage']}",
                f"{predicted[reg]:#010x}",
                f"{got[reg]:#010x}",
                predicted[reg] == got[reg],
                kind=EFFECT,
            )
        )
    regs = decode_id_regs(got)
    want = decode_id_regs(predicted)
    for label, value, expected in (
        ("IDR0.S1P", regs.idr0.s1p, want.idr0.s1p),
        ("IDR0.S2P", regs.idr0.s2p, want.idr0.s2p),
        ("IDR3.RIL", regs.idr3.ril, want.idr3.ril),
        ("IDR3.BBML", regs.idr3.bbml, want.idr3.bbml),
        ("IDR3.FWB", regs.idr3.fwb, want.idr3.fwb),
        ("IDR5.OAS bits", regs.idr5.oas_bits, want.idr5.oas_bits),
        ("IDR1.SSIDSIZE", regs.idr1.ssidsize, want.idr1.ssidsize),
    ):
        verdict.add(Check.effect(f"decoded {label}", expected, value))
    raw_iort, iort, problem = (caps.get("iort"), None, caps.get("iort_error", ""))
    if raw_iort is not None:
        try:
            iort = parse_iort(bytes(raw_iort))
        except DecodeError as exc:
            problem = str(exc)
    capability = nesting_capability(got, iort)
    verdict.facts["capability"] = capability.to_json()
    verdict.facts["iort"] = iort.describe() if iort else problem
    override = override_active(guest.vm.machine)
    verdict.facts["iort_override"] = override
    verdict.add(
        Check.effect(
            "nest parent (IOMMU_HWPT_ALLOC_NEST_PARENT)",
            "success" if capability.nest_parent else "EOPNOTSUPP",
            caps["nest_parent_errno"],
        )
    )
    if capability.nest_parent:
        verdict.add(
            Check(
                "IOMMU_VIOMMU_ALLOC as the capability report predicts",
                "success" if capability.viommu else "EOPNOTSUPP",
                caps["viommu_errno"],
                caps["viommu_errno"] == ("success" if capability.viommu else "EOPNOTSUPP"),
                capability.explain(),
                EFFECT,
            )
        )
    if iort is not None:
        verdict.add(Check.equal("IORT root complex CANWBS as booted", override, iort.canwbs))
        upgrade_logged = any("Table Upgrade: override [IORT" in line for line in caps["acpi_log"])
        verdict.add(
            Check.equal("kernel log: IORT upgraded from the initrd", override, upgrade_logged)
        )
    tainted = int(caps["tainted"])
    verdict.facts["tainted"] = tainted
    verdict.facts["taint_overridden_acpi_table"] = taint_overridden(tainted)
    verdict.facts["acpi_log"] = caps["acpi_log"]
    if not override and raw_iort is not None and iort is not None:
        binary = guest.vm.argv[0] if guest.vm.argv else ""
        with contextlib.suppress(OSError):
            path = store_iort(
                binary, guest.vm.machine, bytes(raw_iort), {"fetched_from": str(guest.artifacts)}
            )
            verdict.facts["iort_cached"] = str(path)
    return verdict


# -- CD-table binding ----------------------------------------------------------------------------

BINDING_CASES: tuple[dict[str, Any], ...] = (
    {"kind": "abort"},
    {"kind": "bypass"},
    {"kind": "s1", "label": "s1-4k-low", "granule": 4096, "iova": 0x10_0000, "asid": 1},
    {
        "kind": "s1",
        "label": "s1-4k-offset",
        "granule": 4096,
        "iova": 0x12_3456_7000,
        "offset": 0xE00,
        "asid": 2,
    },
    {
        "kind": "s1",
        "label": "s1-4k-2m-block",
        "granule": 4096,
        "iova": 0x1_4000_0000,
        "block": True,
        "offset": 0x80,
        "asid": 3,
    },
    {"kind": "s1", "label": "s1-16k-high", "granule": 16384, "iova": 0x7F_FFFC_0000, "asid": 4},
    {"kind": "s1", "label": "s1-64k-top", "granule": 65536, "iova": 0xFFFF_FFFE_0000, "asid": 5},
    {
        "kind": "s1-2level",
        "label": "s1-2level-4k",
        "granule": 4096,
        "iova": 0x20_0000,
        "asid": 6,
        "s1cdmax": 7,
        "length": 4,
    },
)


def _open_session(guest: Guest, verdict: Verdict, depth: int = 64) -> dict[str, Any] | None:
    if not require_override(guest, verdict):
        return None
    bound = bind_edu(guest, verdict)
    if bound is None:
        return None
    session: dict[str, Any] = guest.call(
        "smmuv3.open_session",
        cdev=bound[1],
        bdf=bound[0],
        vsid=VSID,
        dma_mask=EDU_MASK,
        veventq_depth=depth,
    )
    session.update(bdf=bound[0], cdev=bound[1])
    verdict.facts["session"] = {k: v for k, v in session.items() if k != "idrs"}
    ids = [session["nest_parent"], session["viommu"], session["vdevice"], session["veventq"]]
    verdict.add(
        Check(
            "nest parent, vIOMMU, vDEVICE and vEVENTQ allocated (4 distinct object ids)",
            "4 distinct ids > 0",
            ids,
            len({i for i in ids if isinstance(i, int) and i > 0}) == 4,
        )
    )
    return session


@scenario(
    "smmuv3-cd-binding",
    tier=2,
    arches=("arm64",),
    guest=_spec,
    viommu="smmuv3",
    defaults={"cases": list(BINDING_CASES)},
)
def smmuv3_cd_binding(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Nested HWPTs from built STEs: abort, bypass, stage 1 over linear and 2-level CD tables."""
    verdict = Verdict("smmuv3-cd-binding")
    session = _open_session(guest, verdict)
    if session is None:
        return verdict
    ssidsize = decode_id_regs({k: int(v) for k, v in session["idrs"].items()}).idr1.ssidsize
    verdict.facts["cases"] = {}
    for case in params["cases"]:
        label = case.get("label", case["kind"])
        t0 = time.monotonic()
        result = guest.call("smmuv3.binding_case", case=case)
        verdict.timings[f"case_{label}_s"] = round(time.monotonic() - t0, 2)
        verdict.extend(_rows(result))
        facts = result["facts"]
        events = bytes(facts.get("events", b""))
        verdict.facts["cases"][label] = {k: v for k, v in facts.items() if not isinstance(v, bytes)}
        verdict.facts["cases"][label]["events"] = event_summary(events)
        if case["kind"] in ("abort", "bypass"):
            verdict.add(Check.effect(f"{label}: no vEVENTQ records", 0, len(events)))
            continue
        if "dma_ok" not in facts:
            continue
        two_level = case["kind"] == "s1-2level"
        if two_level and ssidsize == 0:
            verdict.add(
                Check.effect(
                    f"{label}: DMA refused by the model (IDR1.SSIDSIZE=0)", False, facts["dma_ok"]
                )
            )
            bad_ste = ExpectedFault(sid=VSID, reason="C_BAD_STE")
            ring = check_veventq(events, [bad_ste, bad_ste], strict=False, ordered=True)
            verdict.add(
                Check(
                    f"{label}: C_BAD_STE in the vEVENTQ with the vSID, one per DMA",
                    "2 matched, nothing else",
                    ring.summary(),
                    ring.ok and len(ring.matched) == 2,
                    "QEMU rejects STE.S1CDMax != 0 without substream support",
                    EFFECT,
                )
            )
        else:
            verdict.add(
                Check.effect(
                    f"{label}: DMA IOVA -> S1 -> IPA -> S2 -> memory, bytes", True, facts["dma_ok"]
                )
            )
            verdict.add(Check.effect(f"{label}: no vEVENTQ records", 0, len(events)))
    guest.call("smmuv3.close_session")
    return verdict


# -- invalidation by effect -----------------------------------------------------------------------


@dataclass(frozen=True)
class InvalidationCase:
    """One invalidation story: the translation change, the right command(s), the wrong ones.

    ``commands`` None means the case is a vSTE replacement (the attach is the invalidation,
    so there is no stale window to observe).  Each ``wrong`` entry is (label, commands): an
    invalidation that must leave the stale translation in place (the negative control).
    ``trace`` is the QEMU trace event (and fields) the right command must reach the model as.
    """

    label: str
    change: str
    iova: int
    asid: int
    commands: tuple[Mapping[str, Any], ...] | None
    wrong: tuple[tuple[str, tuple[Mapping[str, Any], ...]], ...] = ()
    trace: tuple[str, Mapping[str, Any]] | None = None

    def stage_args(self) -> dict[str, Any]:
        return {"label": self.label, "change": self.change, "iova": self.iova, "asid": self.asid}


def _cmd(name: str, **fields: Any) -> Mapping[str, Any]:
    return {"name": name, "fields": fields}


GRANULE = 0x1000


def invalidation_cases(vsid: int) -> list[InvalidationCase]:
    """Every command type arm_vsmmu_cache_invalidate() (7.3) forwards and QEMU caches for.

    ATC_INV is forwarded only where the SMMU has ATS (QEMU's model has none, and edu no ATS
    capability): it is a malformed case (EIO) below, not an effect case.
    """
    va, vaa, asid_, all_, nsnh = 0x3000_0000, 0x3400_0000, 0x3200_0000, 0x3500_0000, 0x3600_0000
    rng = 0x3100_0000
    cd_only = (
        "CFGI_CD_ALL (config only: the TLB keeps the entry)",
        (_cmd("CFGI_CD_ALL", sid=vsid),),
    )
    return [
        InvalidationCase(
            "tlbi-nh-va", "pte", va, 0x21,
            (_cmd("TLBI_NH_VA", asid=0x21, address=va, leaf=True),),
            (
                ("wrong ASID", (_cmd("TLBI_NH_VA", asid=0x61, address=va, leaf=True),)),
                ("wrong VA", (_cmd("TLBI_NH_VA", asid=0x21, address=va + 0x10_0000, leaf=True),)),
            ),
            ("smmuv3_range_inval", {"asid": 0x21, "addr": va}),
        ),
        InvalidationCase(
            "tlbi-nh-va-range", "pte", rng, 0x22,
            (_cmd("TLBI_NH_VA", asid=0x22, address=rng, leaf=True, tg=1, num=1, scale=0),),
            (
                (
                    "range of 2 pages beside the IOVA",
                    (_cmd("TLBI_NH_VA", asid=0x22, address=rng + 2 * GRANULE, leaf=True, tg=1,
                          num=1, scale=0),),
                ),
            ),
            ("smmuv3_range_inval", {"asid": 0x22, "addr": rng, "num_pages": 2}),
        ),
        InvalidationCase(
            "tlbi-nh-vaa", "pte", vaa, 0x25,
            (_cmd("TLBI_NH_VAA", address=vaa, leaf=True),),
            (("wrong VA", (_cmd("TLBI_NH_VAA", address=vaa + 0x10_0000, leaf=True),)),),
            ("smmuv3_range_inval", {"addr": vaa}),
        ),
        InvalidationCase(
            "tlbi-nh-asid", "pte", asid_, 0x23,
            (_cmd("TLBI_NH_ASID", asid=0x23),),
            (("wrong ASID", (_cmd("TLBI_NH_ASID", asid=0x63),)),),
            ("smmuv3_cmdq_tlbi_nh_asid", {"asid": 0x23}),
        ),
        InvalidationCase(
            "tlbi-nh-all", "pte", all_, 0x27,
            (_cmd("TLBI_NH_ALL"),), (cd_only,), ("smmuv3_cmdq_tlbi_nh", {}),
        ),
        InvalidationCase(
            # the kernel turns NSNH_ALL into NH_ALL for the vIOMMU's VMID: QEMU sees NH_ALL
            "tlbi-nsnh-all", "pte", nsnh, 0x28,
            (_cmd("TLBI_NSNH_ALL"),), (cd_only,), ("smmuv3_cmdq_tlbi_nh", {}),
        ),
        InvalidationCase(
            "cfgi-cd", "cd", 0x3300_0000, 0x24,
            (_cmd("CFGI_CD", sid=vsid, leaf=True),),
            (
                ("TLBI_NH_ASID (TLB only: the cached CD stays)",
                 (_cmd("TLBI_NH_ASID", asid=0x24),)),
                ("unknown vSID", (_cmd("CFGI_CD", sid=vsid + 1, leaf=True),)),
            ),
            ("smmuv3_cmdq_cfgi_cd", {"sid": "physical"}),
        ),
        InvalidationCase(
            "cfgi-cd-all", "cd", 0x3700_0000, 0x29,
            (_cmd("CFGI_CD_ALL", sid=vsid),),
            (("unknown vSID", (_cmd("CFGI_CD_ALL", sid=vsid + 1),)),),
            ("smmuv3_cmdq_cfgi_cd", {"sid": "physical"}),
        ),
        InvalidationCase("ste (vSTE replaced)", "ste", 0x3800_0000, 0x2A, None),
    ]  # fmt: skip


def _malformed_cases(vsid: int) -> list[dict[str, Any]]:
    asid = {"name": "TLBI_NH_ASID", "fields": {"asid": 1}}
    return [
        {
            "label": "valid batch",
            "commands": [asid, asid, {"name": "CFGI_CD_ALL", "fields": {"sid": vsid}}],
        },
        {
            "label": "CFGI_STE (not forwarded)",
            "commands": [asid, {"name": "CFGI_STE", "fields": {"sid": vsid, "leaf": True}}],
        },
        {
            "label": "CFGI_CD for an unknown vSID",
            "commands": [{"name": "CFGI_CD", "fields": {"sid": vsid + 1, "leaf": True}}],
        },
        {
            "label": "TLBI_NH_VA with TG but NUM=SCALE=TTL=0",
            "commands": [
                asid,
                asid,
                {"name": "TLBI_NH_VA", "fields": {"asid": 1, "address": 0x1000, "tg": 1}},
            ],
        },
        {
            "label": "TLBI_NH_ALL with SSV set",
            "commands": [{"raw": (0x10 | 1 << 11).to_bytes(8, "little").hex() + "00" * 8}],
        },
        {"label": "CMD_SYNC", "commands": [asid, {"name": "CMD_SYNC"}]},
        {
            "label": "ATC_INV on an SMMU without ATS",
            "commands": [asid, {"name": "ATC_INV", "fields": {"sid": vsid, "size": 0}}],
        },
        {
            "label": "data_type VTD_S1 on an SMMUv3 vIOMMU",
            "commands": [asid],
            "data_type": 0,
            "predicted": ("EINVAL", 0),
        },
    ]


def _trace_matches(
    records: Sequence[TraceRecord], name: str, fields: Mapping[str, Any], sid: int
) -> list[TraceRecord]:
    found = []
    for rec in records:
        if rec.name != name:
            continue
        want = {k: sid if v == "physical" else v for k, v in fields.items()}
        if all(rec.int_field(k) == v for k, v in want.items()):
            found.append(rec)
    return found


def _predict_batch(commands: Sequence[Mapping[str, Any]], ctx: VsmmuContext) -> tuple[str, int]:
    """errno name and entry_num the 7.3 kernel must answer for ``commands`` (host model)."""
    built: list[Any] = []
    for spec in commands:
        if "raw" in spec:
            built.append(bytes.fromhex(spec["raw"]))
        else:
            built.append(make_command(spec["name"], **spec.get("fields", {})))
    batch = check_vsmmu_invalidation_array(built, ctx)
    return errno_name(batch.errno), batch.entry_num


@scenario("smmuv3-invalidation", tier=2, arches=("arm64",), guest=_spec, viommu="smmuv3")
def smmuv3_invalidation(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Re-pointed PTEs / CDs / STEs: stale until the right invalidation, fresh after it."""
    verdict = Verdict("smmuv3-invalidation")
    session = _open_session(guest, verdict)
    if session is None:
        return verdict
    assert guest.vm.qmp is not None
    sid = int(session["sid"])
    ctx = VsmmuContext.from_id_regs(
        decode_id_regs({k: int(v) for k, v in session["idrs"].items()}),
        vsid_to_sid={VSID: sid},
    )
    verdict.facts["trace_events_enabled"] = set_trace_events(guest.vm.qmp, TRACE_PATTERNS)
    shown: dict[str, dict[str, Any]] = {}
    cases = invalidation_cases(VSID)
    if params.get("cases"):  # a subset by label (the mutation tests use one case)
        cases = [c for c in cases if c.label in params["cases"]]
    with contextlib.ExitStack() as stack:  # the CMDQ read from the hardware (hw_queues)
        reader = smmu_queue_reader(guest.vm.qmp) if reader_enabled(params) else None
        hw = stack.enter_context(reader) if reader is not None else None
        verdict.facts["hw_queue_reader"] = hw is not None
        for case in cases:
            shown[case.label] = _invalidation_story(guest, verdict, case, ctx, sid, hw)
    verdict.facts["dma_observations"] = shown
    verdict.facts["no_stale_window"] = {
        c.label: "attaching a nested HWPT installs the STE and invalidates it in one ioctl"
        for c in cases
        if c.commands is None
    }
    verdict.facts["invalidation_effects_shown"] = sorted(
        label
        for label, seen in shown.items()
        if seen.get("stale") == "A" and seen.get("after") == "B"
    )
    malformed = _malformed_cases(VSID)
    for case_, result in zip(
        malformed, guest.call("smmuv3.malformed_invalidations", cases=malformed), strict=True
    ):
        want = case_.get("predicted") or _predict_batch(case_["commands"], ctx)
        verdict.add(
            Check.effect(
                f"invalidate [{case_['label']}]: errno, entry_num",
                list(want),
                [result["errno"], result["entry_num"]],
            )
        )
    guest.call("smmuv3.close_session")
    return verdict


def _invalidation_story(
    guest: Guest,
    verdict: Verdict,
    case: InvalidationCase,
    ctx: VsmmuContext,
    sid: int,
    hw: SmmuQueueReader | None = None,
) -> dict[str, Any]:
    """before (A) -> change -> stale (A) -> each wrong invalidation (A) -> right one (B)."""
    label = case.label
    staged = guest.call("smmuv3.invalidation_stage", case=case.stage_args())
    verdict.add(Check.equal(f"{label}: stage-1 HWPT attached", "success", staged["attach"],
                            staged.get("attach_step", "")))  # fmt: skip
    seen: dict[str, Any] = {"before": staged.get("before"), "stale": staged.get("stale")}
    if staged["attach"] != "success":
        return seen
    verdict.add(
        Check.effect(f"{label}: DMA before the change reaches page A", "A", staged["before"])
    )
    if case.commands is not None:
        verdict.add(
            Check.effect(
                f"{label}: after the change, before any invalidation, DMA still reaches page A",
                "A",
                staged.get("stale"),
                "the model must serve its cached translation, else the case shows no effect",
            )
        )
    for wrong_label, wrong in case.wrong:
        applied = guest.call("smmuv3.invalidation_apply", commands=list(wrong))
        verdict.add(
            Check.effect(
                f"{label}: {wrong_label}: errno, entry_num",
                list(_predict_batch(wrong, ctx)),
                [applied["errno"], applied.get("entry_num")],
            )
        )
        verdict.add(
            Check.effect(
                f"{label}: {wrong_label}: DMA still reaches page A (negative control)",
                "A",
                applied["after"],
            )
        )
        seen[f"after {wrong_label}"] = applied["after"]
    window = TraceWindow(guest.vm.qemu_log)
    commands = list(case.commands) if case.commands is not None else None
    cmdq_before = hw.snapshot() if hw is not None and commands is not None else None
    applied = guest.call("smmuv3.invalidation_apply", commands=commands)
    seen["after"] = applied["after"]
    if hw is not None and cmdq_before is not None and commands is not None:
        cmdq_after = hw.snapshot()
        hw_ctx = context_from_hardware(ctx, hw, cmdq_after, sid)
        verdict.checks.extend(
            cmdq_invalidation_rows(
                label, commands, hw_ctx, cmdq_before, cmdq_after, physical_sid=sid
            )
        )
    if commands is None:
        verdict.add(Check.equal(f"{label}: replacement vSTE attached", "success", applied["errno"],
                                applied.get("step", "")))  # fmt: skip
    else:
        verdict.add(
            Check.effect(
                f"{label}: IOMMU_HWPT_INVALIDATE: errno, entry_num",
                list(_predict_batch(commands, ctx)),
                [applied["errno"], applied.get("entry_num")],
            )
        )
    after = "the vSTE replacement" if commands is None else "the invalidation"
    verdict.add(Check.effect(f"{label}: DMA after {after} reaches page B", "B", applied["after"]))
    if case.trace is not None:
        name, fields = case.trace

        def reached(records: list[TraceRecord]) -> bool:
            return bool(_trace_matches(records, name, fields, sid))

        matched = _trace_matches(_wait_trace(window, reached), name, fields, sid)
        want = {k: (f"{sid:#x}" if v == "physical" else v) for k, v in fields.items()}
        verdict.add(
            Check(
                f"{label}: reached the emulated SMMU as {name}",
                f"{name} {want}",
                matched[0].message if matched else "no such trace record",
                bool(matched),
                kind=EFFECT,
            )
        )
    return seen


# -- fault rings -----------------------------------------------------------------------------


def _overflow(
    guest: Guest, verdict: Verdict, session: Mapping[str, Any], depth: int, count: int
) -> None:
    """``count`` faults into a vEVENTQ of ``depth``: LOST_EVENTS, then delivery goes on."""
    guest.call(
        "smmuv3.open_session",
        cdev=session["cdev"],
        bdf=session["bdf"],
        vsid=VSID,
        dma_mask=EDU_MASK,
        veventq_depth=depth,
    )
    guest.call("smmuv3.fault_case", kind="translation", label="overflow", count=count)
    first = bytes(guest.call("smmuv3.read_events", settle=1.5))
    checker = VEventQChecker(strict=False, first_sequence=0)
    checker.feed(first)
    ring = checker.verdict()
    delivered = sum(1 for record in parse_veventq(first) if record.payload is not None)
    verdict.facts["overflow"] = {"read": event_summary(first), "ring": ring.summary()}
    verdict.add(
        Check.effect(
            f"overflow: depth {depth}, {count} faults: LOST_EVENTS signalled",
            True,
            ring.overflow_signalled,
        )
    )
    verdict.add(
        Check.effect(
            "overflow: delivered (the depth) and lost (the rest)",
            [depth, count - depth],
            [delivered, ring.lost_events],
        )
    )
    guest.call("smmuv3.fault_case", kind="translation", label="after-overflow")
    second = bytes(guest.call("smmuv3.read_events", settle=1.5))
    checker.feed(second)
    ring = checker.verdict()
    verdict.facts["overflow"]["after"] = event_summary(second)
    sequences = [record.sequence for record in parse_veventq(second)]
    verdict.add(
        Check.effect("overflow: the next event takes the next sequence number", [count], sequences)
    )
    verdict.add(
        Check.effect(
            "overflow: nothing missing, duplicated or out of order",
            ((), (), ()),
            (ring.missing, ring.duplicated, ring.out_of_order),
        )
    )
    guest.call("smmuv3.close_session")


def _expected(expect: Mapping[str, Any]) -> ExpectedFault:
    return ExpectedFault(
        sid=expect["sid"],
        address=expect.get("address"),
        reason=expect["reason"],
        is_write=expect.get("is_write"),
        label=expect["label"],
    )


def _stage1_faults(guest: Guest, verdict: Verdict, sid: int, hw: SmmuQueueReader | None) -> None:
    """Translation, permission and bad-CD faults: in the vEVENTQ with the vSID, once each,
    in order; with ``hw``, also in the EVTQ with the physical SID, record for record."""
    before = bytes(guest.call("smmuv3.read_events", settle=0.5))
    verdict.add(Check.effect("vEVENTQ before any fault: no records", [], event_summary(before)))
    hw_before = hw.snapshot() if hw is not None else None
    expected: list[ExpectedFault] = []
    for kind in ("translation", "permission", "bad-cd"):
        result = guest.call("smmuv3.fault_case", kind=kind, label=f"fault-{kind}")
        if "error" in result:
            verdict.add(Check(f"fault-{kind}: set up", "success", result["error"], False))
            continue
        expected.extend(_expected(e) for e in result["expect"])
    data = bytes(guest.call("smmuv3.read_events", settle=1.5))
    ring = check_veventq(data, expected, strict=False, ordered=True, first_sequence=0)
    verdict.facts["veventq"] = ring.summary()
    _ring_checks(verdict, "vEVENTQ (translation, permission, bad CD)", ring)
    verdict.add(Check.effect("vEVENTQ records", len(expected), ring.records_seen))
    for index, want in enumerate(expected):
        hit = any(m.expected_index == index for m in ring.matched)
        verdict.add(
            Check.effect(
                f"{want.label}: vSID {VSID:#x}, reason, IOVA, direction",
                "matched",
                "matched" if hit else "missing",
            )
        )
    if hw is None or hw_before is None:
        return
    after = hw.snapshot()
    physical = [replace(e, sid=sid) for e in expected]
    evtq = evtq_window_verdict(hw_before, after, physical)
    verdict.facts["evtq"] = evtq.summary()
    _ring_checks(verdict, f"EVTQ (hardware, physical SID {sid:#x})", evtq)
    verdict.add(Check.effect("EVTQ records (hardware)", len(expected), evtq.records_seen))
    window = [record for _, record in after.evtq.produced_since(hw_before.evtq)]
    for row in evtq_veventq_rows("stage-1 faults", window, parse_veventq(data), {sid: VSID}):
        verdict.add(row)


def _stage2_fault(guest: Guest, verdict: Verdict, sid: int, hw: SmmuQueueReader | None) -> None:
    """A stage-2 fault: reported in the guest's dmesg (physical SID, S2, IPA), never in the
    vEVENTQ; with ``hw``, in the EVTQ with the same SID and IPA as dmesg shows."""
    mark = guest.call("system.dmesg_mark")
    hw_before = hw.snapshot() if hw is not None else None
    result = guest.call("smmuv3.fault_case", kind="stage2", label="fault-stage2")
    stage2 = bytes(guest.call("smmuv3.read_events", settle=1.5))
    verdict.add(
        Check.effect("stage-2 fault: not forwarded to the vEVENTQ (by design)", 0, len(stage2))
    )
    time.sleep(0.5)
    log = str(guest.call("system.dmesg", since=mark)).replace("\\x09", "\t")
    reports = parse_dmesg_events(log)
    expect = result.get("expect", [{}])[0]
    found = [
        r
        for r in reports
        if r.event is not None
        and r.event.stage2
        and r.event.sid == sid
        and r.event.address == expect.get("address")
    ]
    verdict.facts["stage2_dmesg"] = [
        f"{r.name or r.event_id} sid={r.sid} {r.addresses} s2={r.stage2}" for r in reports
    ]
    verdict.add(
        Check(
            f"stage-2 fault in guest dmesg (physical SID {sid:#x}, S2, IOVA)",
            "found",
            "found" if found else f"{len(reports)} other event reports",
            bool(found),
            kind=EFFECT,
        )
    )
    if found and found[0].event is not None:
        verdict.add(
            Check.effect("stage-2 fault: IPA reported", expect.get("ipa"), found[0].event.ipa)
        )
    if hw is None or hw_before is None:
        return
    after = hw.snapshot()
    window = [record for _, record in after.evtq.produced_since(hw_before.evtq)]
    seen = [decode_event(record, strict=False) for record in window]
    verdict.add(
        Check.effect(
            f"stage-2 fault in the EVTQ (hardware): physical SID {sid:#x}, S2, IOVA, IPA",
            [[hex(sid), True, hex(expect.get("address") or 0), hex(expect.get("ipa") or 0)]],
            [[hex(e.sid), bool(e.stage2), hex(e.address or 0), hex(e.ipa or 0)] for e in seen],
            "the EVTQ holds what the guest kernel then printed; dmesg is the guest's copy",
        )
    )


@scenario(
    "smmuv3-fault-rings",
    tier=2,
    arches=("arm64",),
    guest=_spec,
    viommu="smmuv3",
    defaults={"overflow_depth": 2, "overflow_faults": 5},
)
def smmuv3_fault_rings(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Stage-1 faults in the vEVENTQ (vSID, IOVA, reason, order), overflow, stage 2 in dmesg;
    with the queue reader on (the default), each fault in the SMMU's own EVTQ too."""
    verdict = Verdict("smmuv3-fault-rings")
    session = _open_session(guest, verdict)
    if session is None:
        return verdict
    assert guest.vm.qmp is not None
    with contextlib.ExitStack() as stack:  # the EVTQ read from the hardware (hw_queues)
        reader = smmu_queue_reader(guest.vm.qmp) if reader_enabled(params) else None
        hw = stack.enter_context(reader) if reader is not None else None
        verdict.facts["hw_queue_reader"] = hw is not None
        _stage1_faults(guest, verdict, int(session["sid"]), hw)
        _stage2_fault(guest, verdict, int(session["sid"]), hw)
    _overflow(
        guest, verdict, session, int(params["overflow_depth"]), int(params["overflow_faults"])
    )
    guest.call("smmuv3.close_session")
    return verdict
