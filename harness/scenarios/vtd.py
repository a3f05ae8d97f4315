"""Tier-2 VT-d scenarios: QEMU's emulated VT-d, edu bound to vfio-pci, real DMA.

Host halves: they boot what the scenario asks for (``GuestSpec``), bind edu to vfio-pci in
the guest, run a guest half (``harness.scenarios.guest.vtd``) and judge what came back
against three independent sources: the intel-iommu options (``harness.vtd.predict``),
QEMU itself (QMP ``qom-get`` and trace events) and the guest kernel (dmesg).

- ``vtd-capabilities``: cap/ecap from IOMMU_GET_HW_INFO vs the options' prediction vs
  the properties QMP reports; what each option set lets userspace allocate.
- ``vtd-dma-translation``: edu copies patterns between IOVAs (4 KiB, THP, hugetlb
  backing) through an auto-attached and an explicitly allocated paging HWPT.
- ``vtd-dma-faults``: DMA to an unmapped IOVA; memory untouched, a DMAR fault in dmesg,
  QEMU's trace and fault-recording register agree, exactly one fault per bad DMA.
- ``vtd-nesting``: nest-parent and nested (VTD_S1) HWPTs; the refusal and the ecap bit
  that causes it, or DMA through the nested translation where QEMU allows it.
- ``vtd-pasid``: PASIDs of edu, which has no PASID capability: 7.3 accepts the attach and
  programs nothing; the rows prove it by the PASID table and by untagged DMA staying on
  the RID's HWPT while the PASIDs sit on another.
- ``vtd-cdev-edge-cases``: seed 004's bind / attach / detach error paths on the edu cdev.
- ``vtd-compat-differential``: seed 002's container sequence through type1 and through
  iommufd's compat layer; a difference passes only where ``DOCUMENTED`` cites the seed
  sentence or 7.3 source line for it, the rest fail (``FINDINGS`` lists 7.3's).

Every row is an effect row (the system's answer vs an independent prediction) or a setup
row (a step of the story worked); see ``harness.scenarios.base``.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.guest import Guest
from harness.qemu.description import Edu as EduDevice
from harness.qemu.description import IntelIommu
from harness.qemu.qmp import QmpError, QmpSession
from harness.qemu.trace import TraceRecord, TraceWindow, set_trace_events
from harness.rings import ExpectedFault, RingVerdict, VtdFaultRecorder, check_fault_recording
from harness.scenarios.base import EFFECT, Check, GuestSpec, Verdict, scenario
from harness.scenarios.hw_queues import (
    FRCD_PP,
    FRCD_PV,
    frcd_for,
    reader_enabled,
    unmap_invalidation_rows,
    vtd_unit_reader,
)
from harness.vtd import Cap, DmarFault, Ecap, FaultRecord, dmar_faults, predict_registers
from harness.vtd.predict import KNOWN_OPTIONS, IntelIommuConfig, resolve_config

EDU_ID = (0x1234, 0x11E8)
DEFAULT_DMA_MASK = (1 << 28) - 1
PAGE = 4096
HUGE = 2 * 1024 * 1024
TRACE_EVENTS = ("vtd_dmar_fault", "vtd_frr_new", "vtd_fault_disabled")
# (QEMU 11 names two of them differently: read both; predict maps them back)
QEMU_PROPERTIES = (*sorted(KNOWN_OPTIONS - {"accel", "kernel-irqchip"}), "fsts", "scalable-mode")
IOMMU_HW_INFO_TYPE_INTEL_VTD = 1
IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1


def _spec(options: Mapping[str, Any] | None = None) -> GuestSpec:
    return GuestSpec(viommu="vtd", viommu_options=dict(options or {}), devices=("edu",))


# --- what every scenario needs: edu on vfio-pci, its DMA mask, the VT-d options --------


@dataclass(frozen=True)
class EduBinding:
    """edu in the guest after ``pci.bind_vfio``."""

    bdf: str
    cdev: str
    group: int
    sid: int


def bind_edu(guest: Guest) -> EduBinding:
    """Find edu, hand it to vfio-pci; its cdev, IOMMU group and requester ID."""
    bdfs = guest.call("pci.find", vendor=EDU_ID[0], device=EDU_ID[1])
    if len(bdfs) != 1:
        raise AssertionError(f"expected one edu device in the guest, found {bdfs}")
    device = guest.call("pci.bind_vfio", bdf=bdfs[0])["device"]
    bdf = str(device["bdf"])
    return EduBinding(bdf, str(device["vfio_cdev"]), int(device["iommu_group"]), requester_id(bdf))


def requester_id(bdf: str) -> int:
    """The source ID (bus << 8 | devfn) of ``DDDD:BB:DD.F``: what fault records carry."""
    _, bus, devfn = bdf.split(":")
    dev, fn = devfn.split(".")
    return int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn)


def edu_dma_mask(guest: Guest) -> int:
    """The DMA mask the machine gives edu (``edu,dma_mask=``), default 28 bits."""
    for dev in guest.vm.machine.devices:
        if isinstance(dev, EduDevice) and dev.dma_mask is not None:
            return dev.dma_mask
    return DEFAULT_DMA_MASK


def intel_iommu(guest: Guest) -> IntelIommu:
    viommu = guest.vm.machine.viommu
    if not isinstance(viommu, IntelIommu):
        raise AssertionError(f"scenario needs an intel-iommu machine, got {viommu!r}")
    return viommu


def requested_options(guest: Guest) -> dict[str, Any]:
    """The intel-iommu properties the machine sets, plus the machine facts predict needs."""
    options: dict[str, Any] = dict(intel_iommu(guest).properties())
    accel = guest.vm.accel or "tcg"
    options["accel"] = accel
    if accel == "kvm":
        options["kernel-irqchip"] = "split"
    return options


def qmp(guest: Guest) -> QmpSession:
    if guest.vm.qmp is None:
        raise AssertionError("QMP is not connected")
    return guest.vm.qmp


def find_device_path(session: QmpSession, type_name: str) -> str:
    """QOM path of the first device of ``type_name`` (ids under peripheral, else -anon)."""
    for parent in ("/machine/peripheral", "/machine/peripheral-anon"):
        for child in session.execute("qom-list", {"path": parent}):
            if child.get("type") == f"child<{type_name}>":
                return f"{parent}/{child['name']}"
    raise AssertionError(f"no {type_name} device in QOM")


def qom_properties(session: QmpSession, path: str, names: Iterable[str]) -> dict[str, Any]:
    """``qom-get`` each property; a missing one maps to ``QmpError: ...`` text."""
    values: dict[str, Any] = {}
    for name in names:
        try:
            values[name] = session.execute("qom-get", {"path": path, "property": name})
        except QmpError as exc:
            values[name] = f"QmpError: {exc}"
    return values


def register_checks(prefix: str, predicted: Cap | Ecap, got: Cap | Ecap) -> list[Check]:
    """One effect row per register field (``CAP.SAGAW``...), plus the reserved bits."""
    want, have = predicted.fields(), got.fields()
    checks = [Check.effect(f"{prefix}.{name}", want[name], have[name]) for name in want]
    checks.append(
        Check.effect(f"{prefix} reserved bits", hex(predicted.reserved), hex(got.reserved))
    )
    return checks


def config_checks(from_options: IntelIommuConfig, from_qmp: IntelIommuConfig) -> list[Check]:
    """What the options resolve to vs what QEMU's reported properties resolve to."""
    return [
        Check.equal(f"resolved {f.name}", getattr(from_options, f.name), getattr(from_qmp, f.name))
        for f in dataclasses.fields(from_options)
    ]


def nesting_blockers(cap: Cap, ecap: Ecap) -> list[str]:
    """ECAP bits the 7.3 intel driver needs for a nest parent (``nested_supported``) but lacks."""
    del cap
    return [
        name
        for name, present in (("ECAP.SMTS", ecap.smts), ("ECAP.NEST", ecap.nest))
        if not present
    ]


def paging_expected(ecap: Ecap) -> str:
    """What 7.3 answers a paging HWPT alloc (flags 0 or IOMMU_HWPT_ALLOC_PASID) on ``ecap``.

    intel/iommu.c intel_iommu_domain_alloc_paging_flags tries first stage (scalable mode
    with FSTS, flags ``& ~IOMMU_HWPT_ALLOC_PASID`` must be 0), then second stage (legacy
    mode, or scalable mode with SSTS); both accept IOMMU_HWPT_ALLOC_PASID.
    """
    ok = ecap.first_stage_supported or not ecap.smts or ecap.ssts
    return "success" if ok else "EOPNOTSUPP"


def dirty_tracking_expected(ecap: Ecap) -> str:
    """What 7.3 answers IOMMU_HWPT_ALLOC_DIRTY_TRACKING on ``ecap``.

    iommufd/hw_pagetable.c iommufd_hwpt_paging_alloc: -EOPNOTSUPP unless
    device_iommu_capable(IOMMU_CAP_DIRTY_TRACKING), which intel/iommu.c
    intel_iommu_capable answers with ssads_supported (SMTS, SSADS, SMPWC; iommu.h:534);
    then only intel_iommu_domain_alloc_second_stage takes the flag (needs SSTS).
    """
    return "success" if ecap.dirty_tracking_supported and ecap.ssts else "EOPNOTSUPP"


def hwpt_flag_checks(ecap: Ecap, alloc: Mapping[str, Any]) -> list[Check]:
    """The kernel's answers to DIRTY_TRACKING and ALLOC_PASID HWPTs vs the 7.3 rules."""
    return [
        Check.effect(
            "DIRTY_TRACKING HWPT",
            dirty_tracking_expected(ecap),
            outcome_text(alloc["dirty_tracking"]),
            "hw_pagetable.c iommufd_hwpt_paging_alloc: IOMMU_CAP_DIRTY_TRACKING = intel "
            "ssads_supported (ECAP SMTS+SSADS+SMPWCS); intel_iommu_domain_alloc_second_stage",
        ),
        Check.effect(
            "IOMMU_HWPT_ALLOC_PASID paging HWPT",
            paging_expected(ecap),
            outcome_text(alloc["alloc_pasid"]),
            "intel/iommu.c intel_iommu_domain_alloc_first_stage / _second_stage accept "
            "IOMMU_HWPT_ALLOC_PASID wherever they allocate at all",
        ),
    ]


def outcome_text(result: Mapping[str, Any]) -> str:
    """``success`` or the errno name of a guest ``outcome``."""
    return "success" if result.get("ok") else str(result.get("errno"))


def _ok_dma(result: Mapping[str, Any] | None) -> bool:
    return bool(result and result.get("equal"))


# --- vtd-capabilities -------------------------------------------------------------------


@scenario("vtd-capabilities", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_capabilities(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """cap/ecap from GET_HW_INFO vs the options' prediction vs QMP; what allocates."""
    verdict = Verdict("vtd-capabilities")
    t0 = time.monotonic()
    options = requested_options(guest)
    edu = bind_edu(guest)
    session = qmp(guest)
    path = find_device_path(session, "intel-iommu")
    reported = qom_properties(session, path, QEMU_PROPERTIES)
    verdict.facts["qmp_path"] = path
    verdict.facts["qmp_properties"] = reported
    for name, value in intel_iommu(guest).properties().items():
        verdict.add(Check.equal(f"QMP {name}", value, reported.get(name)))
    from_options = resolve_config(options)
    machine_keys = {k: v for k, v in options.items() if k in ("accel", "kernel-irqchip")}
    usable = {k: v for k, v in reported.items() if not str(v).startswith("QmpError")}
    from_qmp = resolve_config({**usable, **machine_keys})
    verdict.checks.extend(config_checks(from_options, from_qmp))
    dma_mask = edu_dma_mask(guest)
    edu_path = find_device_path(session, "edu")
    verdict.add(
        Check.equal(
            "QMP edu dma_mask",
            dma_mask,
            session.execute("qom-get", {"path": edu_path, "property": "dma_mask"}),
        )
    )
    probe = guest.call("vtd.probe", cdev=edu.cdev, dma_mask=dma_mask, seed=params["seed"] & 0xFF)
    info = probe["hw_info"]
    verdict.add(
        Check.effect("GET_HW_INFO out_data_type", IOMMU_HW_INFO_TYPE_INTEL_VTD, info["data_type"])
    )
    if "cap" not in info:
        return verdict
    verdict.add(
        Check.effect(
            "iommu_hw_info_vtd.flags", IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, info["vtd_flags"]
        )
    )
    q = session.execute("query-version")["qemu"]  # which QEMU's model to predict from
    version = (int(q["major"]), int(q["minor"]), int(q["micro"]))
    verdict.facts["qemu_version_for_prediction"] = ".".join(map(str, version))
    cap_want, ecap_want = predict_registers(options, version)
    cap_got, ecap_got = Cap.decode(info["cap"]), Ecap.decode(info["ecap"])
    verdict.add(Check.effect("CAP_REG", hex(cap_want.encode()), hex(info["cap"])))
    verdict.add(Check.effect("ECAP_REG", hex(ecap_want.encode()), hex(info["ecap"])))
    verdict.checks.extend(register_checks("CAP", cap_want, cap_got))
    verdict.checks.extend(register_checks("ECAP", ecap_want, ecap_got))
    qmp_cap, qmp_ecap = predict_registers({**usable, **machine_keys}, version)
    verdict.add(Check.effect("CAP_REG predicted from QMP", hex(qmp_cap.encode()), hex(info["cap"])))
    verdict.add(
        Check.effect("ECAP_REG predicted from QMP", hex(qmp_ecap.encode()), hex(info["ecap"]))
    )
    alloc = probe["alloc"]
    verdict.add(
        Check.equal(
            "attach edu to an IOAS (auto HWPT)", "success", outcome_text(alloc["attach_ioas"])
        )
    )
    verdict.add(
        Check.effect("DMA round trip, auto HWPT", True, _ok_dma(alloc["attach_ioas"].get("dma")))
    )
    paging = alloc["paging_hwpt"]
    verdict.add(Check.equal("allocate a paging HWPT", "success", outcome_text(paging)))
    verdict.add(
        Check.effect("DMA round trip, explicit paging HWPT", True, _ok_dma(paging.get("dma")))
    )
    blockers = nesting_blockers(cap_got, ecap_got)
    verdict.add(
        Check.effect(
            "NEST_PARENT HWPT",
            "EOPNOTSUPP" if blockers else "success",
            outcome_text(alloc["nest_parent"]),
            f"missing {', '.join(blockers)}" if blockers else "",
        )
    )
    verdict.checks.extend(hwpt_flag_checks(ecap_want, alloc))
    verdict.facts.update(
        options={k: v for k, v in options.items()},
        cap=hex(info["cap"]),
        ecap=hex(info["ecap"]),
        max_pasid_log2=info["max_pasid_log2"],
        hw_capabilities=info["capabilities"],
        allocations={name: outcome_text(result) for name, result in alloc.items()},
        dirty_tracking_supported=ecap_want.dirty_tracking_supported,
        nesting_blocked_by=blockers,
        ecap_bits={
            k: v
            for k, v in ecap_got.fields().items()
            if k in ("SMTS", "FSTS", "SSTS", "NEST", "PASID", "SC", "PT", "IR", "EIM", "SRS")
        },
    )
    verdict.timings["capabilities_s"] = time.monotonic() - t0
    return verdict


# --- vtd-dma-translation ----------------------------------------------------------------


def translation_cases(seed: int, dma_mask: int = DEFAULT_DMA_MASK) -> list[dict[str, Any]]:
    """IOVAs, sizes and backings for the translation scenario, drawn from ``seed``."""
    rng = random.Random(seed)
    top = dma_mask + 1
    half = top // 2

    def pick(size: int, lower: int, upper: int) -> int:
        return rng.randrange(lower // size, (upper - size) // size + 1) * size

    small = 4 * PAGE
    cases = [
        {
            "label": "iova 0 -> last pages under the DMA mask",
            "backing": "4k",
            "map_size": small,
            "src_iova": 0,
            "dst_iova": top - small,
            "offset": 0,
            "length": PAGE,
        },
        {
            "label": "1 byte",
            "backing": "4k",
            "map_size": small,
            "src_iova": pick(small, 0, half),
            "dst_iova": pick(small, half, top),
            "offset": rng.randrange(PAGE),
            "length": 1,
        },
        {
            "label": "4095 bytes, odd offset",
            "backing": "4k",
            "map_size": small,
            "src_iova": pick(small, 0, half),
            "dst_iova": pick(small, half, top),
            "offset": 1,
            "length": PAGE - 1,
        },
        {
            "label": "3 pages + 1 byte across page boundaries",
            "backing": "4k",
            "map_size": small,
            "src_iova": pick(small, 0, half),
            "dst_iova": pick(small, half, top),
            "offset": 0x7FF,
            "length": 3 * PAGE + 1,
        },
    ]
    length = rng.randrange(1, 2 * PAGE)
    cases.append(
        {
            "label": f"random {length} bytes",
            "backing": "4k",
            "map_size": small,
            "src_iova": pick(small, 0, half),
            "dst_iova": pick(small, half, top),
            "offset": rng.randrange(small - length),
            "length": length,
        }
    )
    for backing in ("thp", "hugetlb"):
        src, dst = pick(HUGE, 0, half), pick(HUGE, half, top)
        for label, offset in (
            ("start", 0),
            ("mid, across 4 KiB", HUGE // 2 - PAGE // 2),
            ("end", HUGE - PAGE),
        ):
            cases.append(
                {
                    "label": f"{backing} 2 MiB page, {label}",
                    "backing": backing,
                    "map_size": HUGE,
                    "src_iova": src,
                    "dst_iova": dst,
                    "offset": offset,
                    "length": PAGE,
                }
            )
    return cases


@scenario("vtd-dma-translation", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_dma_translation(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """edu copies patterns between IOVAs through auto and explicit paging HWPTs."""
    verdict = Verdict("vtd-dma-translation")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    cases = translation_cases(int(params["seed"]), mask)
    t0 = time.monotonic()
    result = guest.call(
        "vtd.dma_translation", cdev=edu.cdev, cases=cases, dma_mask=mask, timeout=900
    )
    verdict.timings["dma_s"] = time.monotonic() - t0
    verdict.extend(result["rows"])
    verdict.facts["cases"] = result["cases"]
    verdict.facts["dma_mask"] = hex(mask)
    return verdict


# --- vtd-dma-faults ---------------------------------------------------------------------

_DMAR_TRACE = re.compile(
    r"sid 0x(?P<sid>[0-9a-fA-F]+) fault (?P<fault>\d+) addr 0x(?P<addr>[0-9a-fA-F]+)"
    r" write (?P<write>\d)"
)
_FRR_TRACE = re.compile(
    r"index (?P<index>\d+) high 0x(?P<hi>[0-9a-fA-F]+) low 0x(?P<lo>[0-9a-fA-F]+)"
)


@dataclass(frozen=True)
class TraceFault:
    """A ``vtd_dmar_fault`` trace record: what QEMU's VT-d model decided to report."""

    sid: int
    reason: int
    address: int
    is_write: bool


@dataclass(frozen=True)
class TraceRecordWrite:
    """A ``vtd_frr_new`` trace record: the fault-recording register QEMU wrote."""

    index: int
    record: FaultRecord
    raw_pv: int = 0


def trace_faults(records: Iterable[TraceRecord]) -> list[TraceFault]:
    """Decode the ``vtd_dmar_fault`` records."""
    out = []
    for rec in records:
        m = _DMAR_TRACE.search(rec.message) if rec.name == "vtd_dmar_fault" else None
        if m:
            out.append(
                TraceFault(
                    int(m["sid"], 16), int(m["fault"]), int(m["addr"], 16), m["write"] == "1"
                )
            )
    return out


def trace_record_writes(records: Iterable[TraceRecord]) -> list[TraceRecordWrite]:
    """Decode the ``vtd_frr_new`` records into fault records (low qword first).

    QEMU 10.0.2 in legacy mode writes PV=0xffff with PP clear; PV only means something
    when PP is set, so it is dropped before decoding and kept as ``raw_pv``.
    """
    out = []
    for rec in records:
        m = _FRR_TRACE.search(rec.message) if rec.name == "vtd_frr_new" else None
        if m:
            lo, hi = int(m["lo"], 16), int(m["hi"], 16)
            raw_pv = 0 if hi & FRCD_PP else (hi & FRCD_PV) >> 40
            record = FaultRecord.from_words([lo, hi & ~FRCD_PV if raw_pv else hi])
            out.append(TraceRecordWrite(int(m["index"]), record, raw_pv))
    return out


def expected_reason(config: IntelIommuConfig, is_write: bool) -> int:
    """QEMU 10's fault reason for a non-present leaf: first stage 0x71, else 0x05 / 0x06."""
    if config.flts:
        return 0x71
    return 0x05 if is_write else 0x06


def fault_ring(
    nfr: int, per_dma: Sequence[tuple[ExpectedFault, Sequence[FaultRecord]]]
) -> list[RingVerdict]:
    """Replay QEMU's register writes DMA by DMA; one verdict per bad DMA.

    Each bad DMA's records go into a fault-recording file of ``nfr`` registers the way the
    hardware writes them; the verdict must show exactly that one expected record.  The
    guest kernel then services the registers (its dmesg line is the evidence), which is
    replayed before the next DMA.
    """
    recorder = VtdFaultRecorder(nfr)
    verdicts = []
    for expected, records in per_dma:
        for record in records:
            recorder.record(record)
        verdicts.append(check_fault_recording(recorder.frcd, recorder.fsts, [expected]))
        recorder.service()
    return verdicts


def bad_dmas(seed: int, good_iova: int, dma_mask: int = DEFAULT_DMA_MASK) -> list[dict[str, Any]]:
    """Three distinct unmapped-to-be IOVAs: write, read, write."""
    rng = random.Random(seed ^ 0xFA17)
    slots = rng.sample(range(0x100, (dma_mask + 1) // PAGE), 3)
    iovas = [s * PAGE for s in slots if s * PAGE != good_iova][:3]
    return [
        {"iova": iova, "direction": d}
        for iova, d in zip(iovas, ("write", "read", "write"), strict=False)
    ]


@scenario("vtd-dma-faults", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_dma_faults(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Unmap, DMA again: memory untouched; dmesg, QEMU's trace and FRCD agree, once per DMA."""
    verdict = Verdict("vtd-dma-faults")
    config = resolve_config(requested_options(guest))
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    info = guest.call("vtd.hw_info", cdev=edu.cdev)
    cap = Cap.decode(info["cap"])
    good_iova = 0x40000
    bad = bad_dmas(int(params["seed"]), good_iova, mask)
    enabled = set_trace_events(qmp(guest), TRACE_EVENTS)
    verdict.facts["trace_events_enabled"] = enabled
    window = TraceWindow(guest.vm.qemu_log)
    t0 = time.monotonic()
    result = guest.call(
        "vtd.faults", cdev=edu.cdev, good_iova=good_iova, bad=bad, dma_mask=mask, timeout=300
    )
    verdict.timings["faults_s"] = time.monotonic() - t0
    time.sleep(0.2)
    records = window.records("vtd_*")
    verdict.extend(result["rows"])
    traced = trace_faults(records)
    writes = trace_record_writes(records)
    per_dma: list[tuple[ExpectedFault, Sequence[FaultRecord]]] = []
    evidence = []
    for event in result["events"]:
        iova, is_write = event["iova"], event["direction"] == "write"
        label = f"#{event['index']} {event['direction']} @ {iova:#x}"
        reason = expected_reason(config, is_write)
        verdict.add(
            Check.effect(
                f"{label}: edu finished, reports nothing",
                (False, 0),
                (event["edu_busy_after"], event["edu_irq_status"]),
            )
        )
        if is_write:
            verdict.add(
                Check.effect(
                    f"{label}: RAM behind the unmapped IOVA untouched", True, event["ram_untouched"]
                )
            )
        else:
            verdict.add(
                Check.effect(
                    f"{label}: edu did not receive the RAM bytes",
                    False,
                    event["device_got_ram_bytes"],
                )
            )
        faults = [f for f in dmar_faults(event["dmesg"]) if f.kind == "dma"]
        verdict.add(Check.effect(f"{label}: DMAR faults in dmesg", 1, len(faults)))
        mine = [f for f in faults if f.address == iova]
        got: DmarFault | None = mine[0] if mine else None
        verdict.add(
            Check.effect(
                f"{label}: dmesg fault (sid, addr, write, reason)",
                (hex(edu.sid), hex(iova), is_write, hex(reason)),
                (hex(got.sid), hex(got.address), got.is_write, hex(got.reason)) if got else None,
            )
        )
        in_page = range(iova, iova + PAGE)
        qemu = [f for f in traced if f.address in in_page]
        verdict.add(
            Check.effect(
                f"{label}: QEMU vtd_dmar_fault, first for this page (sid, addr, write, reason)",
                (hex(edu.sid), hex(iova), is_write, hex(reason)),
                (hex(qemu[0].sid), hex(qemu[0].address), qemu[0].is_write, hex(qemu[0].reason))
                if qemu
                else None,
            )
        )
        frcd = [w.record for w in writes if w.record.address in in_page]
        raw_pv = [hex(w.raw_pv) for w in writes if w.record.address in in_page and w.raw_pv]
        expected = ExpectedFault(
            sid=edu.sid, address=iova, reason=reason, is_write=is_write, label=label
        )
        per_dma.append((expected, frcd))
        if got is not None and frcd:
            verdict.add(
                Check(
                    f"{label}: dmesg record == QEMU's FRCD write",
                    repr(frcd[0]),
                    repr(got.to_fault_record()),
                    got.matches(frcd[0]),
                    kind=EFFECT,
                )
            )
        evidence.append(
            {
                "qemu_translation_failures": len(qemu),
                "frcd_pv_with_pp_clear": raw_pv,
                "label": label,
                "dmesg": [f.line for f in faults],
                "trace": [
                    f"{r.name} {r.message}" for r in records if hex(iova)[2:] in r.message.lower()
                ],
            }
        )
    for (expected, _), ring in zip(
        per_dma, fault_ring(cap.num_fault_records, per_dma), strict=True
    ):
        verdict.add(
            Check(
                f"{expected.label}: ring verdict",
                "OK, 1 record matched",
                ring.summary(),
                ring.ok and ring.records_seen == 1 and len(ring.matched) == 1,
                kind=EFFECT,
            )
        )
    stderr = guest.vm.stderr_log.read_text(errors="replace") if guest.vm.stderr_log.exists() else ""
    first = f"iova={bad[0]['iova']:#x})" if bad else ""
    verdict.add(
        Check(
            "QEMU stderr: vtd_iommu_translate translation failure (first fault)",
            first,
            "present" if first in stderr else "absent",
            bool(first) and first in stderr,
            "error_report_once: QEMU prints only the first failure",
            EFFECT,
        )
    )
    verdict.facts.update(
        bad_dmas=[{**b, "iova": hex(b["iova"])} for b in bad],
        evidence=evidence,
        nfr=cap.num_fault_records,
    )
    verdict.facts["hw_queue_reader"] = reader_enabled(params)
    if reader_enabled(params):
        _unit_rows(guest, verdict, edu, mask, good_iova, expected_reason(config, True))
    return verdict


#: the page the hardware rows unmap and fault on (below edu's default 28-bit DMA mask)
HW_IOVA = 0x7654000


def _unit_rows(
    guest: Guest, verdict: Verdict, edu: EduBinding, mask: int, good_iova: int, reason: int
) -> None:
    """The same unmap and fault, judged on the VT-d unit's own state read over QMP: the
    invalidation the kernel queued for the unmap (domain id from the device's context or
    PASID entry), and the fault in the fault-recording registers (absent before it)."""
    with vtd_unit_reader(qmp(guest)) as unit:
        opened = guest.call(
            "vtd.unmap_open", cdev=edu.cdev, dma_mask=mask, good_iova=good_iova, iova=HW_IOVA
        )
        try:
            verdict.add(
                Check.equal(
                    "unit: DMA through the page while mapped", True, opened["dma_while_mapped"]
                )
            )
            entry = unit.device(edu.sid)
            verdict.facts["vtd_device_entry"] = dataclasses.asdict(entry)
            before = unit.snapshot()
            guest.call("vtd.unmap_apply")
            after = unit.snapshot()
            for row in unmap_invalidation_rows("unit: unmap", entry, HW_IOVA, 0, before, after):
                verdict.add(row)
            verdict.add(
                Check.effect("unit: FRCD before the fault: no record of the page", None,
                             _frcd_text(frcd_for(after, HW_IOVA)))
            )  # fmt: skip
            fault = guest.call("vtd.unmap_fault", direction="write")
            post = unit.snapshot()
        finally:
            guest.call("vtd.unmap_close")
    verdict.add(Check.effect("unit: RAM behind the unmapped page untouched", True,
                             fault["ram_untouched"]))  # fmt: skip
    found = frcd_for(post, HW_IOVA)
    verdict.add(
        Check.effect(
            "unit: FRCD after the fault (sid, addr, write, reason)",
            (hex(edu.sid), hex(HW_IOVA), True, hex(reason)),
            _frcd_text(found),
            "read from the fault-recording registers; the guest's dmar_fault clears F and "
            "leaves the fields",
        )
    )
    verdict.facts["unit_frcd"] = {
        "fault_bit_still_set": found[1] if found else None,
        "fsts": hex(post.fsts),
        "registers": [post.frcd[i : i + 16].hex() for i in range(0, len(post.frcd), 16)],
    }


def _frcd_text(found: tuple[FaultRecord, bool] | None) -> tuple[str, str, bool, str] | None:
    if found is None:
        return None
    record, _ = found
    return (hex(record.sid), hex(record.address), record.is_write, hex(record.reason))


# --- vtd-nesting ------------------------------------------------------------------------


@scenario("vtd-nesting", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_nesting(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Nest parent + VTD_S1 nested HWPT; the refusal and the missing ecap bit, or DMA."""
    verdict = Verdict("vtd-nesting")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    info = guest.call("vtd.hw_info", cdev=edu.cdev)
    cap, ecap = Cap.decode(info["cap"]), Ecap.decode(info["ecap"])
    blockers = nesting_blockers(cap, ecap)
    verdict.add(
        Check.effect(
            "ECAP bits a nest parent needs, missing (predicted from the options / read)",
            nesting_blockers(*predict_registers(requested_options(guest))),
            blockers,
        )
    )
    result = guest.call(
        "vtd.nesting",
        cdev=edu.cdev,
        dma_mask=mask,
        s1_iova=0x8000000,
        gpa=0x1000000,
        table_gpa=0x2000000,
        timeout=300,
    )
    note = f"missing {', '.join(blockers)}" if blockers else "ECAP.SMTS and ECAP.NEST set"
    verdict.add(
        Check.effect(
            "nest-parent HWPT",
            "EOPNOTSUPP" if blockers else "success",
            outcome_text(result["nest_parent"]),
            note,
        )
    )
    if not blockers:
        verdict.add(
            Check.equal(
                "nested HWPT (IOMMU_HWPT_DATA_VTD_S1)",
                "success",
                outcome_text(result.get("nested", {})),
            )
        )
        verdict.add(
            Check.equal(
                "attach nested HWPT", "success", outcome_text(result.get("attach_nested", {}))
            )
        )
        verdict.add(Check.effect("DMA through S1 over S2", True, _ok_dma(result.get("dma"))))
    verdict.add(
        Check.effect(
            "VTD_S1 HWPT over a non-nest-parent paging HWPT",
            "EINVAL",
            outcome_text(result["nested_over_plain_paging"]),
            "iommufd_hwpt_nested_alloc: parent is not a nest parent",
        )
    )
    verdict.add(
        Check.effect(
            "VTD_S1 data with an IOAS as parent",
            "EOPNOTSUPP",
            outcome_text(result["vtd_s1_data_over_ioas"]),
            "intel_iommu_domain_alloc_paging_flags refuses user data",
        )
    )
    verdict.facts.update(
        cap=hex(info["cap"]),
        ecap=hex(info["ecap"]),
        missing_ecap_bits=blockers,
        s1_tables=result["s1"],
        outcomes={
            k: outcome_text(v) for k, v in result.items() if isinstance(v, dict) and "ok" in v
        },
    )
    return verdict


# --- vtd-pasid --------------------------------------------------------------------------

#: why 7.3 lets a PASID attach to edu succeed (edu has no PASID capability)
SRC_PASID_NO_CAP = (
    "iommu.c:438-453 dev_iommu_get_max_pasids: pci_max_pasids fails without a PASID "
    "capability, so edu's max_pasids is 0; iommu.c:3660-3670 iommu_attach_device_pasid skips "
    "the 'pasid >= max_pasids' check for such devices ('These devices cannot issue "
    "transactions with PASID') and iommu.c:3564 __iommu_set_group_pasid calls set_dev_pasid "
    "only when max_pasids > 0: the attach is recorded in group->pasid_array and programs "
    "nothing; vfio (device_cdev.c vfio_df_ioctl_attach_pt, vfio/iommufd.c:189-213) and "
    "iommufd (device.c iommufd_hw_pagetable_attach) add no PASID-capability check"
)


@scenario("vtd-pasid", tier=2, arches=("x86_64",), guest=_spec({"pasid_mode": True}), viommu="vtd")
def vtd_pasid(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """PASIDs of edu (no PASID capability): 7.3's answers, and that they change no DMA."""
    verdict = Verdict("vtd-pasid")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    result = guest.call("vtd.pasid", cdev=edu.cdev, bdf=edu.bdf, dma_mask=mask, timeout=300)
    info = result["hw_info"]
    ecap = Ecap.decode(info["ecap"])
    verdict.add(Check.effect("ECAP.PASID", bool(intel_iommu(guest).pasid_mode), ecap.pasid))
    verdict.add(
        Check.effect(
            "edu config space size (256: no extended capabilities, so no PASID capability)",
            256,
            result["config_size"],
        )
    )
    verdict.add(
        Check.effect(
            "GET_HW_INFO out_max_pasid_log2",
            0,
            info["max_pasid_log2"],
            "device.c:1713-1723 iommufd_get_hw_info: 0 unless dev->iommu->max_pasids",
        )
    )
    verdict.add(
        Check.effect(
            "PASID 1 attach to a HWPT without IOMMU_HWPT_ALLOC_PASID",
            "EINVAL",
            outcome_text(result["attach_pasid_plain_hwpt"]),
            "device.c:533-534 iommufd_hwpt_pasid_compat: !hwpt->pasid_compat -> -EINVAL",
        )
    )
    for key, label in (("alloc_pasid_hwpt_a", "A (RID)"), ("alloc_pasid_hwpt_b", "B (PASID)")):
        verdict.add(
            Check.equal(
                f"IOMMU_HWPT_ALLOC_PASID paging HWPT {label}", "success", outcome_text(result[key])
            )
        )
    verdict.add(
        Check.equal("RID attach to HWPT A", "success", outcome_text(result.get("attach_rid", {})))
    )
    verdict.add(
        Check.effect(
            "untagged DMA before any PASID attach goes through", "A", result.get("dma_before")
        )
    )
    for key, pasid in (("attach_pasid", "1"), ("attach_pasid_too_large", "2^20")):
        verdict.add(
            Check.effect(
                f"PASID {pasid} attach to HWPT B (edu: max_pasids 0)",
                "success",
                outcome_text(result.get(key, {})),
                SRC_PASID_NO_CAP
                + (" (2^20 is past ECAP.PSS too)" if key == "attach_pasid_too_large" else ""),
            )
        )
    verdict.add(
        Check.effect(
            "PASID-table entries of edu after both PASID attaches (debugfs)",
            [0],
            result.get("pasid_entries"),
            "only RID_PASID (0) is present: __iommu_set_group_pasid programmed nothing "
            "(iommu.c:3564)",
        )
    )
    verdict.add(
        Check.effect(
            "untagged DMA while PASIDs 1 and 2^20 are on HWPT B goes through",
            "A",
            result.get("dma_during"),
            "the PASID attaches leave the RID's translation (RID_PASID entry) on HWPT A",
        )
    )
    for key, pasid in (("detach_pasid", "1"), ("detach_pasid_too_large", "2^20")):
        verdict.add(
            Check.equal(f"PASID {pasid} detach", "success", outcome_text(result.get(key, {})))
        )
    verdict.add(
        Check.effect("untagged DMA after the PASID detaches goes through", "A",
                     result.get("dma_after"))
    )  # fmt: skip
    verdict.add(
        Check.effect(
            "PASID 2 detach when not attached",
            "success",
            outcome_text(result["detach_pasid_not_attached"]),
            "vfio/iommufd.c:215-228 vfio_iommufd_physical_pasid_detach_ioas returns when the "
            "PASID is not in vdev->pasids; device_cdev.c vfio_df_ioctl_detach_pt returns 0",
        )
    )
    verdict.facts.update(
        ecap=hex(info["ecap"]),
        pasid_entries=result.get("pasid_entries"),
        outcomes={
            k: outcome_text(v) for k, v in result.items() if isinstance(v, dict) and "ok" in v
        },
    )
    return verdict


# --- vtd-cdev-edge-cases ----------------------------------------------------------------


@scenario("vtd-cdev-edge-cases", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_cdev_edge_cases(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Seed 004's bind/attach/detach error paths on edu's cdev; the device stays usable."""
    verdict = Verdict("vtd-cdev-edge-cases")
    edu = bind_edu(guest)
    result = guest.call(
        "vtd.cdev_edge_cases", cdev=edu.cdev, dma_mask=edu_dma_mask(guest), timeout=300
    )
    verdict.extend(result["rows"])
    verdict.facts["rows"] = result["rows"]
    return verdict


# --- vtd-compat-differential ------------------------------------------------------------
#
# The same container sequence runs through type1 (/dev/vfio/vfio) and through iommufd's
# compat layer (/dev/iommu).  Every operation is one effect row: compat must answer as
# type1 did, unless a row of ``DOCUMENTED`` covers that exact difference (op, aspect, the
# pair of answers) with the seed 002 sentence or Linux 7.3 source line that explains it.
# Any other difference fails the scenario: those seen on 7.3 are listed, with the
# analysis of the source, in ``FINDINGS``; a difference in neither table is UNDOCUMENTED.
# Line numbers: seed 002 = /work/shared/seeds/002_9bef84782ef56186.txt, kernel files =
# linux-source-7.3 (7.3.4) as the guest kernel is built from.

SEED_002 = "seed 002"
S002_LIMITS = (
    f"{SEED_002} line 8: 'Resource limits rely on memory cgroups to bound what userspace can "
    "do instead of the module parameter dma_entry_limit.'"
)
S002_ERRNO = (
    f"{SEED_002} line 10: 'A full audit for pedantic compatibility details (eg errnos, etc) "
    "has not yet been done'"
)
S002_NOT_IMPLEMENTED = (
    f"{SEED_002} line 12: 'The following are not going to be implemented and we expect to "
    "remove them from VFIO type1:'"
)
S002_DIRTY = f"{S002_NOT_IMPLEMENTED} + line 13: '- SW access 'dirty tracking'.'"
S002_VADDR = f"{S002_NOT_IMPLEMENTED} + line 15: '- VFIO_DMA_MAP_FLAG_VADDR'"
#: where compat's ENODEV comes from (every op before VFIO_GROUP_SET_CONTAINER)
SRC_NO_IOAS = (
    "vfio_compat.c:15-26 get_compat_ioas returns ERR_PTR(-ENODEV) while no compat IOAS "
    "exists (group.c vfio_group_ioctl_set_container creates it)"
)
SRC_V1_SPLIT = (
    "type1 v1: vfio_iommu_type1.c:1464-1468 (vfio_dma_do_unmap) 'an unmap request offset "
    "from the beginning of the original mapping will return success with zero sized unmap. "
    "And an unmap request covering the first iova of mapping will unmap the entire range' "
    "(:1496); compat TYPE1: vfio_compat.c:337-346 (iommufd_vfio_set_iommu) 'The difference "
    "between TYPE1 and TYPE1v2 is the ability to unmap in the middle of mapped ranges ... "
    "Then we can safely unmap within any range' and :230-243 (iommufd_vfio_unmap_dma) cut "
    "the areas at the requested range's ends"
)
IOVA_RANGE_CAP = 1
MIGRATION_CAP = 2
DMA_AVAIL_CAP = 3
U16_MAX, U32_MAX, U64_MAX = 0xFFFF, 0xFFFFFFFF, (1 << 64) - 1
#: container_sequence's layout (guest/vtd.py): A is 16 pages at 0x100000, the sink 1 page
SEQ_PAGE, SEQ_A_PAGES = 4096, 16
TYPE1V2, TYPE1V1 = 3, 1
BOTH_TYPES = (TYPE1V2, TYPE1V1)
#: GET_INFO after SET_IOMMU (the one before it fails on both sides)
GET_INFO_OPS = (
    "IOMMU_GET_INFO (set)",
    "IOMMU_GET_INFO (3 mappings)",
    "IOMMU_GET_INFO (before UNMAP_ALL)",
    "IOMMU_GET_INFO (after UNMAP_ALL)",
)


@dataclass(frozen=True)
class Rule:
    """An answer given as a rule (a value that varies with the machine), shown as ``text``."""

    text: str
    test: Callable[[Any], bool]

    def __repr__(self) -> str:
        return self.text


def _fits(spec: Any, value: Any) -> bool:
    return spec.test(value) if isinstance(spec, Rule) else bool(spec == value)


@dataclass(frozen=True)
class Difference:
    """One way the two backends answered an operation differently.

    ``explained`` (argsz only): the bytes of the difference the capability differences
    account for (type1's migration capability, a differently sized IOVA-range capability).
    """

    op: str
    aspect: str
    type1: Any
    compat: Any
    explained: int | None = None


def op_key(op: str) -> str:
    """An op name with the IOMMU type written as N (``SET_IOMMU 3 again``)."""
    return re.sub(r"SET_IOMMU \d+ again", "SET_IOMMU N again", op)


def row_prefix(iommu_type: int) -> str:
    return "type1v2" if iommu_type == TYPE1V2 else "type1"


def row_name(iommu_type: int, op: str, aspect: str | None = None) -> str:
    """The verdict row of ``op`` (and ``aspect`` for a difference) under ``iommu_type``."""
    name = f"{row_prefix(iommu_type)}: {op.replace('SET_IOMMU N', f'SET_IOMMU {iommu_type}')}"
    return name if aspect is None else f"{name} [{aspect}]"


@dataclass(frozen=True)
class Documented:
    """A difference a source documents: on ``ops``, ``aspect`` reads ``type1`` / ``compat``."""

    ops: tuple[str, ...]
    aspect: str
    type1: Any
    compat: Any
    cite: str
    iommu_types: tuple[int, ...] = BOTH_TYPES
    test: Callable[[Difference], bool] | None = None

    def covers(self, d: Difference, iommu_type: int) -> bool:
        if iommu_type not in self.iommu_types or op_key(d.op) not in self.ops:
            return False
        if d.aspect != self.aspect:
            return False
        if self.test is not None:
            return self.test(d)
        return _fits(self.type1, d.type1) and _fits(self.compat, d.compat)


@dataclass(frozen=True)
class Finding:
    """A difference no source documents, seen on Linux 7.3, with the analysis of why."""

    op: str
    aspect: str
    type1: Any
    compat: Any
    analysis: str
    iommu_types: tuple[int, ...] = BOTH_TYPES

    def covers(self, d: Difference, iommu_type: int) -> bool:
        return (
            iommu_type in self.iommu_types
            and op_key(d.op) == self.op
            and d.aspect == self.aspect
            and _fits(self.type1, d.type1)
            and _fits(self.compat, d.compat)
        )


def _argsz_explained(d: Difference) -> bool:
    return d.explained is not None and d.type1 - d.compat == d.explained


#: every accepted difference, each with the text that documents exactly it
DOCUMENTED: tuple[Documented, ...] = (
    Documented(
        ("IOMMU_GET_INFO (no group)",), "errno", "EINVAL", "ENODEV",
        f"{S002_ERRNO}; type1: container.c:333,352-353 (vfio_fops_unl_ioctl) -EINVAL, no IOMMU "
        f"driver to pass GET_INFO to; compat: vfio_compat.c:459-461 ({SRC_NO_IOAS})",
    ),
    Documented(
        ("SET_IOMMU before SET_CONTAINER",), "errno", "EINVAL", "ENODEV",
        f"{S002_ERRNO}; type1: container.c:276-278 (vfio_ioctl_set_iommu) -EINVAL without a "
        "group; compat: vfio_compat.c:332-335 '/* VFIO fails the set_iommu if there is no "
        f"group */' ({SRC_NO_IOAS})",
    ),
    Documented(
        ("SET_IOMMU bogus type 99",), "errno", "ENODEV", "EINVAL",
        f"{S002_ERRNO}; type1: container.c:264 ret = -ENODEV stays when no IOMMU driver's "
        "CHECK_EXTENSION claims the type (:297-300); compat: vfio_compat.c:328-330 -EINVAL "
        "for any type but TYPE1 / TYPE1v2",
    ),
    Documented(
        ("UNMAP_DMA middle of A (pages 4..7)", "UNMAP_DMA first page of A"), "errno",
        "EINVAL", "ENOENT",
        f"{S002_ERRNO}; type1 v2: vfio_iommu_type1.c:1471-1482 (vfio_dma_do_unmap) refuses a "
        "range that bisects a mapping, ret = -EINVAL (:1397); compat: io_pagetable.c:778-779 "
        "(iopt_unmap_iova_range) -ENOENT for a range that cuts an area ('Splitting/truncating "
        "IOVA mappings is not allowed', :849)",
        (TYPE1V2,),
    ),
    Documented(
        ("CHECK_EXTENSION VFIO_UPDATE_VADDR (set)",), "value", 1, 0,
        f"{S002_VADDR}; compat: vfio_compat.c:297-306 returns 0; type1: "
        "vfio_iommu_type1.c:2736 returns 1 without mdevs",
    ),
    Documented(
        GET_INFO_OPS, "migration capability", True, False,
        f"{S002_DIRTY}; type1 chains VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION "
        "(vfio_iommu_type1.c:2859 vfio_iommu_migration_build_caps) for its "
        "VFIO_IOMMU_DIRTY_PAGES; compat chains DMA_AVAIL and IOVA_RANGE only "
        "(vfio_compat.c:440-443) and answers VFIO_IOMMU_DIRTY_PAGES -ENOIOCTLCMD (:531-533)",
    ),
    Documented(
        GET_INFO_OPS, "capabilities",
        sorted((IOVA_RANGE_CAP, MIGRATION_CAP, DMA_AVAIL_CAP)),
        sorted((IOVA_RANGE_CAP, DMA_AVAIL_CAP)),
        f"{S002_DIRTY}; the capability compat lacks is MIGRATION (see [migration capability])",
    ),
    Documented(
        GET_INFO_OPS, "dma_avail",
        Rule("dma_entry_limit (U16_MAX) less one per mapping", lambda v: 0 < v <= U16_MAX),
        U32_MAX,
        f"{S002_LIMITS}; type1: dma_entry_limit = U16_MAX (vfio_iommu_type1.c:59), one less "
        "per mapping (:1761, :2830); compat: vfio_compat.c:418-425 returns U32_MAX",
    ),
    *(
        Documented(
            GET_INFO_OPS, aspect,
            Rule("sizeof(info) + its capabilities", lambda v: True),
            Rule("type1's less the capability differences", lambda v: True),
            "argsz = sizeof(vfio_iommu_type1_info) + the capability chain "
            "(vfio_iommu_type1.c:2875-2876, vfio_compat.c:468-499): the difference is "
            "type1's migration capability (row [migration capability]) plus any difference "
            "in the IOVA-range capability's size (row [iova_ranges])",
            test=_argsz_explained,
        )
        for aspect in ("argsz", "argsz_needed")
    ),
    Documented(
        ("UNMAP_DMA middle of A (pages 4..7)",), "value", 0, 4 * SEQ_PAGE, SRC_V1_SPLIT,
        (TYPE1V1,),
    ),
    Documented(
        ("DMA A[5] -> sink (after middle unmap)",), "value",
        {"arrived": True}, {"arrived": False},
        f"the middle unmap's effect: type1 v1 unmapped nothing, compat unmapped pages 4..7; "
        f"{SRC_V1_SPLIT}",
        (TYPE1V1,),
    ),
    Documented(
        ("UNMAP_DMA first page of A",), "value", SEQ_A_PAGES * SEQ_PAGE, SEQ_PAGE,
        SRC_V1_SPLIT, (TYPE1V1,),
    ),
    Documented(
        ("DMA A[1] -> sink (after first-page unmap)",), "value",
        {"arrived": False}, {"arrived": True},
        "the first-page unmap's effect: type1 v1 unmapped all of A, compat page 0 only; "
        f"{SRC_V1_SPLIT}",
        (TYPE1V1,),
    ),
    Documented(
        ("UNMAP_DMA ALL",), "value",
        SEQ_PAGE, (SEQ_A_PAGES - 5) * SEQ_PAGE + SEQ_PAGE,
        "what the two splits left: type1 v1 the sink only, compat A less pages 0 and 4..7 "
        f"plus the sink; {SRC_V1_SPLIT}",
        (TYPE1V1,),
    ),
)  # fmt: skip

#: differences seen on Linux 7.3 that no seed 002 sentence or 7.3 source line documents:
#: each FAILS the scenario (the VM test requires exactly these rows to fail)
FINDINGS: tuple[Finding, ...] = (
    Finding(
        "CHECK_EXTENSION VFIO_DMA_CC_IOMMU (no group)", "outcome", "success", "ENODEV",
        "compat's iommufd_vfio_cc_iommu (vfio_compat.c:262-264) returns get_compat_ioas's "
        "-ENODEV when no compat IOAS exists, so an extension query fails; type1's container "
        "polls the drivers with no IOMMU data and vfio_iommu_type1_check_extension answers 0 "
        "(vfio_iommu_type1.c:2737-2739). Not an errno difference: type1 succeeds.",
    ),
    Finding(
        "CHECK_EXTENSION VFIO_DMA_CC_IOMMU (set)", "value", 0, 1,
        "the compat IOAS has no HWPT until the device fd is opened (group.c:211 "
        "vfio_df_group_open -> vfio_iommufd_compat_attach_ioas) and iommufd_vfio_cc_iommu "
        "starts at rc = 1, clearing it only for a non-coherent HWPT (vfio_compat.c:260-272), "
        "so an empty IOAS claims cache coherency; type1 attached the group to a domain at "
        "SET_IOMMU (container.c:309) and reports that domain's enforce_cache_coherency "
        "(vfio_iommu_type1.c:2740): 0, QEMU's VT-d has no ECAP.SC (intel/iommu.c "
        "intel_iommu_capable). Once the device is open both answer 0 (row '(device open)').",
    ),
    *(
        Finding(
            f"CHECK_EXTENSION VFIO_NOIOMMU_IOMMU ({when})", "value", 0, 1,
            "compat answers IS_ENABLED(CONFIG_VFIO_NOIOMMU) (vfio_compat.c:288-289), a "
            "build-time constant; type1's container asks its drivers: vfio-noiommu answers 1 "
            "only with the enable_unsafe_noiommu_mode parameter set (container.c:50, "
            "vfio_main.c:58-60; off here) and type1 answers 0 (vfio_iommu_type1.c:2741). "
            "compat advertises no-IOMMU mode the kernel would not grant through type1.",
        )
        for when in ("no group", "set")
    ),
    Finding(
        "SET_IOMMU N again", "outcome", "EINVAL", "success",
        "type1 refuses a second SET_IOMMU once a driver is set (container.c:276 "
        "'|| container->iommu_driver' -> -EINVAL); iommufd_vfio_set_iommu keeps no record "
        "of a type set (vfio_compat.c:310-349: it only disables large pages for TYPE1), so it "
        "succeeds again (and would let TYPE1v2 switch to TYPE1 while nothing is mapped).",
    ),
    Finding(
        "IOMMU_GET_INFO (set)", "iova_pgsizes",
        Rule("the domain's page sizes", lambda v: v != U64_MAX & ~0xFFF),
        U64_MAX & ~0xFFF,
        "compat attaches the device to the compat IOAS only when the device fd is opened "
        "(group.c:211), so at SET_IOMMU the IOAS has no domain and iommufd_get_pagesizes "
        "reduces over none: ULONG_MAX masked to PAGE_MASK (vfio_compat.c:351-369); type1 "
        "attached the group at SET_IOMMU (container.c:309) and reports the domain's bitmap. "
        "After the device is opened both report the domain's sizes.",
    ),
    Finding(
        "IOMMU_GET_INFO (set)", "iova_ranges",
        Rule("the domain's aperture less the MSI window", lambda v: v != [[0, U64_MAX]]),
        [[0, U64_MAX]],
        "same cause: the compat IOAS's reserved_itree is empty until a device attaches "
        "(reserved regions and the aperture are added by iommufd_device_attach_reserved_iova "
        "and iopt_table_add_domain), so iommufd_fill_cap_iova reports one hole [0, ULONG_MAX] "
        "(vfio_compat.c:388-402); type1 built its iova_list at SET_IOMMU.",
    ),
    Finding(
        "UNMAP_DMA unaligned", "outcome", "EINVAL", "success",
        "type1's vfio_dma_do_unmap rejects an IOVA not aligned to the smallest page "
        "(vfio_iommu_type1.c:1422, -EINVAL); iommufd_vfio_unmap_dma checks no alignment "
        "(vfio_compat.c:213-246) and iopt_unmap_iova_range over a range with no area returns "
        "0 ('If there are no mapped entries then success', io_pagetable.c:750), so compat "
        "reports success with 0 bytes.",
    ),
)  # fmt: skip

FINDING_NOTE = "FINDING (Linux 7.3, not documented): "
UNDOCUMENTED_NOTE = "UNDOCUMENTED difference (no seed 002 sentence or 7.3 source line covers it)"


def finding_rows(iommu_types: Iterable[int] = BOTH_TYPES) -> set[str]:
    """The verdict rows the listed findings fail, for the IOMMU types a run covers."""
    return {
        row_name(t, f.op, f.aspect) for f in FINDINGS for t in iommu_types if t in f.iommu_types
    }


def _outcome(op: Mapping[str, Any]) -> str:
    return "success" if op["ok"] else str(op["errno"])


def _answer(op: Mapping[str, Any]) -> Any:
    """What one backend answered: the errno, or the value (``success`` for none)."""
    if not op["ok"]:
        return op["errno"]
    return "success" if op.get("value") is None else op["value"]


def _info_differences(op: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """GET_INFO field by field; argsz carries the bytes the capability differences explain."""
    out: list[Difference] = []
    type1_caps, compat_caps = set(a["cap_ids"]), set(b["cap_ids"])
    ranges_differ = a["iova_ranges"] != b["iova_ranges"]
    explained = 0
    if MIGRATION_CAP in type1_caps - compat_caps:
        explained += a["cap_sizes"][str(MIGRATION_CAP)]
    for key in ("flags", "iova_pgsizes", "iova_ranges"):
        if a[key] != b[key]:
            out.append(Difference(op, key, a[key], b[key]))
    if type1_caps != compat_caps:
        out.append(Difference(op, "capabilities", sorted(type1_caps), sorted(compat_caps)))
    for cap in sorted(type1_caps & compat_caps):
        size_a, size_b = a["cap_sizes"][str(cap)], b["cap_sizes"][str(cap)]
        if size_a == size_b:
            continue
        if cap == IOVA_RANGE_CAP and ranges_differ:
            explained += size_a - size_b
            continue
        out.append(Difference(op, f"capability {cap} size", size_a, size_b))
    if a["dma_avail"] != b["dma_avail"]:
        out.append(Difference(op, "dma_avail", a["dma_avail"], b["dma_avail"]))
    for key in ("argsz", "argsz_needed"):
        if a[key] != b[key]:
            out.append(Difference(op, key, a[key], b[key], explained))
    if a["migration"] != b["migration"]:
        out.append(Difference(op, "migration capability", a["migration"], b["migration"]))
    return out


def op_differences(type1: Mapping[str, Any], compat: Mapping[str, Any]) -> list[Difference]:
    """How one operation's answers differ (GET_INFO field by field); empty when they agree."""
    op = str(type1["op"])
    if type1["ok"] and compat["ok"]:
        a, b = type1.get("value"), compat.get("value")
        if a == b:
            return []
        if isinstance(a, dict) and isinstance(b, dict) and "argsz" in a:
            return _info_differences(op, a, b)
        return [Difference(op, "value", a, b)]
    if not type1["ok"] and not compat["ok"]:
        if type1["errno"] == compat["errno"]:
            return []
        return [Difference(op, "errno", type1["errno"], compat["errno"])]
    return [Difference(op, "outcome", _outcome(type1), _outcome(compat))]


def judge_difference(d: Difference, iommu_type: int) -> Check:
    """A documented difference passes citing its source; a finding or anything else fails."""
    name = row_name(iommu_type, d.op, d.aspect)
    doc = next((x for x in DOCUMENTED if x.covers(d, iommu_type)), None)
    if doc is not None:
        return Check(
            name,
            f"type1 {doc.type1!r}, compat {doc.compat!r}",
            f"type1 {d.type1!r}, compat {d.compat!r}",
            doc.covers(d, iommu_type),
            doc.cite,
            EFFECT,
        )
    finding = next((f for f in FINDINGS if f.covers(d, iommu_type)), None)
    note = FINDING_NOTE + finding.analysis if finding else UNDOCUMENTED_NOTE
    return Check.effect(name, d.type1, d.compat, note)


def compare_sequences(
    type1_ops: Sequence[Mapping[str, Any]], compat_ops: Sequence[Mapping[str, Any]], iommu_type: int
) -> tuple[list[Check], list[Difference]]:
    """One effect row per operation: compat answers as type1, or a documented difference.

    An operation whose answers agree is a row expecting type1's answer and getting
    compat's; each difference is a row of its own (``judge_difference``).
    """
    names_a = [o["op"] for o in type1_ops]
    names_b = [o["op"] for o in compat_ops if o["op"] in set(names_a)]
    if names_a != names_b:
        return [Check.equal("same operation sequence", names_a, names_b)], []
    checks: list[Check] = []
    found: list[Difference] = []
    by_name = {o["op"]: o for o in compat_ops}
    for op in type1_ops:
        other = by_name[op["op"]]
        diffs = op_differences(op, other)
        found.extend(diffs)
        if not diffs:
            checks.append(
                Check.effect(
                    row_name(iommu_type, op["op"]), _answer(op), _answer(other),
                    "compat answers as type1",
                )
            )  # fmt: skip
        checks.extend(judge_difference(d, iommu_type) for d in diffs)
    return checks, found


@scenario(
    "vtd-compat-differential",
    tier=2,
    arches=("x86_64",),
    guest=_spec(),
    viommu="vtd",
    known_failures=lambda: finding_rows(BOTH_TYPES),
)
def vtd_compat_differential(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Seed 002: the container sequence via type1 and iommufd compat, differences checked."""
    verdict = Verdict("vtd-compat-differential")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    sequences: dict[str, Any] = {}
    differences: list[dict[str, Any]] = []
    for iommu_type in BOTH_TYPES:
        runs = {}
        for backend in ("type1", "compat"):
            t0 = time.monotonic()
            runs[backend] = guest.call(
                "vtd.container_sequence",
                backend=backend,
                iommu_type=iommu_type,
                group=edu.group,
                bdf=edu.bdf,
                dma_mask=mask,
                timeout=600,
            )
            verdict.timings[f"{backend}_type{iommu_type}_s"] = time.monotonic() - t0
        checks, found = compare_sequences(runs["type1"]["ops"], runs["compat"]["ops"], iommu_type)
        verdict.checks.extend(checks)
        differences.extend(dataclasses.asdict(d) for d in found)
        sequences[f"type{iommu_type}"] = runs
        for backend, run in runs.items():
            _dma_sanity(verdict, f"{backend} type{iommu_type}", run["ops"])
    verdict.facts["differences"] = differences
    verdict.facts["findings"] = sorted(
        c.name for c in verdict.checks if c.note.startswith(FINDING_NOTE)
    )
    verdict.facts["sequences"] = sequences
    return verdict


def _dma_sanity(verdict: Verdict, label: str, ops: Iterable[Mapping[str, Any]]) -> None:
    """DMA through a mapped IOVA arrives and through an unmapped one does not, either backend."""
    for op in ops:
        name = str(op["op"])
        if name.startswith("DMA ") and op["ok"] and ("(mapped)" in name or "(A unmapped)" in name):
            want = "(mapped)" in name
            verdict.add(Check.effect(f"{label}: {name} arrived", want, op["value"]["arrived"]))


# --- registry helpers for tests ---------------------------------------------------------

#: the option matrix of ``vtd-capabilities`` (one boot each): name -> IntelIommu overrides
OPTION_MATRIX: dict[str, dict[str, Any]] = {
    "legacy": {"scalable_mode": False, "flts": False},
    "legacy-aw39-cm-off": {
        "scalable_mode": False,
        "flts": False,
        "caching_mode": False,
        "aw_bits": 39,
    },
    "scalable": {"flts": False},
    "scalable-flts": {},
    "scalable-flts-pasid": {"pasid_mode": True},
    "scalable-aw39-cm-off": {"flts": False, "caching_mode": False, "aw_bits": 39},
}
