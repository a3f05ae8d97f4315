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
- ``vtd-pasid``: attach HWPTs to a PASID of edu (which has no PASID capability).
- ``vtd-cdev-edge-cases``: seed 004's bind / attach / detach error paths on the edu cdev.
- ``vtd-compat-differential``: seed 002's container sequence through type1 and through
  iommufd's compat layer, every difference checked against what the seed documents.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.guest import Guest
from harness.qemu.description import Edu as EduDevice
from harness.qemu.description import IntelIommu
from harness.qemu.qmp import QmpError, QmpSession
from harness.qemu.trace import TraceRecord, TraceWindow, set_trace_events
from harness.rings import ExpectedFault, RingVerdict, VtdFaultRecorder, check_fault_recording
from harness.scenarios.base import Check, GuestSpec, Verdict, scenario
from harness.vtd import Cap, DmarFault, Ecap, FaultRecord, dmar_faults, predict_registers
from harness.vtd.predict import KNOWN_OPTIONS, IntelIommuConfig, resolve_config

EDU_ID = (0x1234, 0x11E8)
DEFAULT_DMA_MASK = (1 << 28) - 1
PAGE = 4096
HUGE = 2 * 1024 * 1024
TRACE_EVENTS = ("vtd_dmar_fault", "vtd_frr_new", "vtd_fault_disabled")
QEMU_PROPERTIES = tuple(sorted(KNOWN_OPTIONS - {"accel", "kernel-irqchip"}))
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
    _, bus, devfn = bdf.split(":")
    dev, fn = devfn.split(".")
    sid = int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn)
    return EduBinding(bdf, str(device["vfio_cdev"]), int(device["iommu_group"]), sid)


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
    """One check per register field (``CAP.SAGAW``...), plus the reserved bits."""
    want, have = predicted.fields(), got.fields()
    checks = [Check.equal(f"{prefix}.{name}", want[name], have[name]) for name in want]
    checks.append(
        Check.equal(f"{prefix} reserved bits", hex(predicted.reserved), hex(got.reserved))
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
        Check.equal("GET_HW_INFO out_data_type", IOMMU_HW_INFO_TYPE_INTEL_VTD, info["data_type"])
    )
    if "cap" not in info:
        return verdict
    verdict.add(
        Check.equal(
            "iommu_hw_info_vtd.flags", IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17, info["vtd_flags"]
        )
    )
    cap_want, ecap_want = predict_registers(options)
    cap_got, ecap_got = Cap.decode(info["cap"]), Ecap.decode(info["ecap"])
    verdict.add(Check.equal("CAP_REG", hex(cap_want.encode()), hex(info["cap"])))
    verdict.add(Check.equal("ECAP_REG", hex(ecap_want.encode()), hex(info["ecap"])))
    verdict.checks.extend(register_checks("CAP", cap_want, cap_got))
    verdict.checks.extend(register_checks("ECAP", ecap_want, ecap_got))
    qmp_cap, qmp_ecap = predict_registers({**usable, **machine_keys})
    verdict.add(Check.equal("CAP_REG predicted from QMP", hex(qmp_cap.encode()), hex(info["cap"])))
    verdict.add(
        Check.equal("ECAP_REG predicted from QMP", hex(qmp_ecap.encode()), hex(info["ecap"]))
    )
    alloc = probe["alloc"]
    verdict.add(
        Check.equal(
            "attach edu to an IOAS (auto HWPT)", "success", outcome_text(alloc["attach_ioas"])
        )
    )
    verdict.add(
        Check(
            "DMA round trip, auto HWPT",
            True,
            _ok_dma(alloc["attach_ioas"].get("dma")),
            _ok_dma(alloc["attach_ioas"].get("dma")),
        )
    )
    paging = alloc["paging_hwpt"]
    verdict.add(Check.equal("allocate a paging HWPT", "success", outcome_text(paging)))
    verdict.add(
        Check(
            "DMA round trip, explicit paging HWPT",
            True,
            _ok_dma(paging.get("dma")),
            _ok_dma(paging.get("dma")),
        )
    )
    blockers = nesting_blockers(cap_got, ecap_got)
    verdict.add(
        Check.equal(
            "NEST_PARENT HWPT",
            "EOPNOTSUPP" if blockers else "success",
            outcome_text(alloc["nest_parent"]),
            f"missing {', '.join(blockers)}" if blockers else "",
        )
    )
    verdict.facts.update(
        options={k: v for k, v in options.items()},
        cap=hex(info["cap"]),
        ecap=hex(info["ecap"]),
        max_pasid_log2=info["max_pasid_log2"],
        hw_capabilities=info["capabilities"],
        allocations={name: outcome_text(result) for name, result in alloc.items()},
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


_FRCD_PP = 1 << 31
_FRCD_PV = ((1 << 20) - 1) << 40


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
            raw_pv = 0 if hi & _FRCD_PP else (hi & _FRCD_PV) >> 40
            record = FaultRecord.from_words([lo, hi & ~_FRCD_PV if raw_pv else hi])
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
            Check.equal(
                f"{label}: edu finished, reports nothing",
                (False, 0),
                (event["edu_busy_after"], event["edu_irq_status"]),
            )
        )
        if is_write:
            verdict.add(
                Check.equal(
                    f"{label}: RAM behind the unmapped IOVA untouched", True, event["ram_untouched"]
                )
            )
        else:
            verdict.add(
                Check.equal(
                    f"{label}: edu did not receive the RAM bytes",
                    False,
                    event["device_got_ram_bytes"],
                )
            )
        faults = [f for f in dmar_faults(event["dmesg"]) if f.kind == "dma"]
        verdict.add(Check.equal(f"{label}: DMAR faults in dmesg", 1, len(faults)))
        mine = [f for f in faults if f.address == iova]
        got: DmarFault | None = mine[0] if mine else None
        verdict.add(
            Check.equal(
                f"{label}: dmesg fault (sid, addr, write, reason)",
                (hex(edu.sid), hex(iova), is_write, hex(reason)),
                (hex(got.sid), hex(got.address), got.is_write, hex(got.reason)) if got else None,
            )
        )
        in_page = range(iova, iova + PAGE)
        qemu = [f for f in traced if f.address in in_page]
        verdict.add(
            Check.equal(
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
        )
    )
    verdict.facts.update(
        bad_dmas=[{**b, "iova": hex(b["iova"])} for b in bad],
        evidence=evidence,
        nfr=cap.num_fault_records,
    )
    return verdict


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
        Check.equal(
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
        Check.equal(
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
        verdict.add(Check.equal("DMA through S1 over S2", True, _ok_dma(result.get("dma"))))
    verdict.add(
        Check.equal(
            "VTD_S1 HWPT over a non-nest-parent paging HWPT",
            "EINVAL",
            outcome_text(result["nested_over_plain_paging"]),
            "iommufd_hwpt_nested_alloc: parent is not a nest parent",
        )
    )
    verdict.add(
        Check.equal(
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


@scenario("vtd-pasid", tier=2, arches=("x86_64",), guest=_spec({"pasid_mode": True}), viommu="vtd")
def vtd_pasid(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Attach HWPTs to PASID 1 of edu (no PASID capability) under x-pasid-mode."""
    verdict = Verdict("vtd-pasid")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    result = guest.call("vtd.pasid", cdev=edu.cdev, bdf=edu.bdf, dma_mask=mask, timeout=300)
    info = result["hw_info"]
    ecap = Ecap.decode(info["ecap"])
    pasid_mode = bool(intel_iommu(guest).pasid_mode)
    verdict.add(Check.equal("ECAP.PASID", pasid_mode, ecap.pasid))
    verdict.add(
        Check.equal(
            "edu config space (no extended capabilities, no PASID)", 256, result["config_size"]
        )
    )
    verdict.add(Check.equal("GET_HW_INFO out_max_pasid_log2", 0, info["max_pasid_log2"]))
    verdict.add(
        Check.equal(
            "PASID attach to a HWPT without IOMMU_HWPT_ALLOC_PASID",
            "EINVAL",
            outcome_text(result["attach_pasid_plain_hwpt"]),
            "iommufd_hwpt_pasid_compat",
        )
    )
    verdict.add(
        Check.equal(
            "paging HWPT with IOMMU_HWPT_ALLOC_PASID",
            "success",
            outcome_text(result["alloc_pasid_hwpt"]),
        )
    )
    verdict.add(
        Check.equal(
            "RID attach to the PASID-capable HWPT",
            "success",
            outcome_text(result.get("attach_rid_pasid_hwpt", {})),
        )
    )
    verdict.add(
        Check.equal("DMA (untagged, through the RID)", True, _ok_dma(result.get("dma_rid")))
    )
    verdict.add(
        Check.equal(
            "PASID 1 attach, device without PASID capability",
            "success",
            outcome_text(result.get("attach_pasid", {})),
            "7.3 iommu_attach_device_pasid skips devices with max_pasids 0",
        )
    )
    verdict.add(
        Check.equal(
            "PASID-table entries of edu after the PASID attach (debugfs)",
            [0],
            result.get("pasid_entries"),
            "only RID_PASID 0 present: the PASID 1 attach programmed nothing",
        )
    )
    verdict.add(
        Check.equal("PASID detach", "success", outcome_text(result.get("detach_pasid", {})))
    )
    verdict.add(
        Check.equal(
            "PASID detach when not attached",
            "success",
            outcome_text(result["detach_pasid_not_attached"]),
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

SEED_002 = "seed 002"
DOC_ERRNO = (
    f"{SEED_002}: 'A full audit for pedantic compatibility details (eg errnos, etc) has "
    "not yet been done'"
)
DOC_DIRTY = (
    f"{SEED_002}: not implemented: 'SW access dirty tracking' (type1's migration "
    "capability of VFIO_IOMMU_GET_INFO)"
)
DOC_LIMITS = (
    f"{SEED_002}: 'Resource limits rely on memory cgroups ... instead of the module parameter "
    "dma_entry_limit' (compat reports a constant: U16_MAX in the seed, U32_MAX in 7.3)"
)
DOC_VADDR = f"{SEED_002}: not implemented: VFIO_DMA_MAP_FLAG_VADDR (VFIO_UPDATE_VADDR is 0)"
DOC_SPLIT = (
    f"{SEED_002}: SET_IOMMU(VFIO_TYPE1_IOMMU) disables large pages and iommufd_vfio_unmap_dma "
    "cuts the IOVA at the requested range: compat splits mappings type1 v1 does not"
)
IOVA_RANGE_CAP = 1
MIGRATION_CAP = 2


@dataclass(frozen=True)
class Difference:
    """One way the two backends answered an operation differently."""

    op: str
    aspect: str
    type1: Any
    compat: Any
    documented_by: str = ""


def _outcome(op: Mapping[str, Any]) -> str:
    return "success" if op["ok"] else str(op["errno"])


def _info_differences(op: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """GET_INFO field by field; size differences a listed difference explains are not repeated."""
    out: list[Difference] = []
    type1_caps, compat_caps = set(a["cap_ids"]), set(b["cap_ids"])
    migration_size = a["cap_sizes"].get(str(MIGRATION_CAP), 0) if a["migration"] else 0
    ranges_differ = a["iova_ranges"] != b["iova_ranges"]
    for key in ("flags", "iova_pgsizes", "iova_ranges"):
        if a[key] != b[key]:
            out.append(Difference(op, key, a[key], b[key]))
    if type1_caps != compat_caps:
        only_migration = type1_caps - compat_caps == {MIGRATION_CAP} and compat_caps < type1_caps
        out.append(
            Difference(op, "capabilities", sorted(type1_caps), sorted(compat_caps),
                       DOC_DIRTY if only_migration else "")
        )  # fmt: skip
    range_size_delta = 0
    for cap in sorted(type1_caps & compat_caps):
        size_a, size_b = a["cap_sizes"][str(cap)], b["cap_sizes"][str(cap)]
        if size_a == size_b:
            continue
        if cap == IOVA_RANGE_CAP and ranges_differ:
            range_size_delta = size_a - size_b
            continue
        out.append(Difference(op, f"capability {cap} size", size_a, size_b))
    if a["dma_avail"] != b["dma_avail"]:
        constant = b["dma_avail"] in (0xFFFF, 0xFFFFFFFF)
        out.append(Difference(op, "dma_avail", a["dma_avail"], b["dma_avail"],
                              DOC_LIMITS if constant else ""))  # fmt: skip
    for key in ("argsz", "argsz_needed"):
        delta = a[key] - b[key]
        if delta == 0 or (delta == migration_size + range_size_delta and range_size_delta):
            continue
        out.append(
            Difference(op, key, a[key], b[key], DOC_DIRTY if delta == migration_size else "")
        )
    if a["migration"] != b["migration"]:
        out.append(
            Difference(op, "migration capability", a["migration"], b["migration"], DOC_DIRTY)
        )
    return out


_SPLIT_OPS = (
    "UNMAP_DMA ALL",
    "UNMAP_DMA middle of A",
    "UNMAP_DMA first page of A",
    "DMA A[5] -> sink (after middle",
    "DMA A[1] -> sink (after first-page",
)


def op_differences(
    type1: Mapping[str, Any], compat: Mapping[str, Any], iommu_type: int
) -> list[Difference]:
    """How one operation's answers differ, each difference with the seed text covering it."""
    op = str(type1["op"])
    if type1["ok"] and compat["ok"]:
        a, b = type1.get("value"), compat.get("value")
        if a == b:
            return []
        if isinstance(a, dict) and isinstance(b, dict) and "argsz" in a:
            return _info_differences(op, a, b)
        documented = ""
        if op.startswith("CHECK_EXTENSION VFIO_UPDATE_VADDR") and a == 1 and b == 0:
            documented = DOC_VADDR
        elif iommu_type == 1 and op.startswith(_SPLIT_OPS):
            documented = DOC_SPLIT
        return [Difference(op, "value", a, b, documented)]
    if not type1["ok"] and not compat["ok"]:
        if type1["errno"] == compat["errno"]:
            return []
        return [Difference(op, "errno", type1["errno"], compat["errno"], DOC_ERRNO)]
    return [Difference(op, "outcome", _outcome(type1), _outcome(compat))]


#: type1 vs iommufd-compat differences seed 002 does not document, found on Linux 7.3
#: (op with the IOMMU type normalised, aspect).  They are reported as findings; any
#: other undocumented difference fails the scenario.
KNOWN_FINDINGS = frozenset(
    {
        ("CHECK_EXTENSION VFIO_DMA_CC_IOMMU (no group)", "outcome"),
        ("CHECK_EXTENSION VFIO_DMA_CC_IOMMU (set)", "value"),
        ("CHECK_EXTENSION VFIO_NOIOMMU_IOMMU (no group)", "value"),
        ("CHECK_EXTENSION VFIO_NOIOMMU_IOMMU (set)", "value"),
        ("SET_IOMMU N again", "outcome"),
        ("IOMMU_GET_INFO (set)", "iova_pgsizes"),
        ("IOMMU_GET_INFO (set)", "iova_ranges"),
        ("UNMAP_DMA unaligned", "outcome"),
    }
)


def finding_key(op: str, aspect: str) -> tuple[str, str]:
    """The key of a difference in ``KNOWN_FINDINGS``."""
    return re.sub(r"SET_IOMMU \d+ again", "SET_IOMMU N again", op), aspect


def compare_sequences(
    type1_ops: Sequence[Mapping[str, Any]], compat_ops: Sequence[Mapping[str, Any]], iommu_type: int
) -> tuple[list[Check], list[Difference]]:
    """Operation by operation: a check per match or documented difference, else a failure."""
    checks: list[Check] = []
    found: list[Difference] = []
    names_a = [o["op"] for o in type1_ops]
    names_b = [o["op"] for o in compat_ops if o["op"] in set(names_a)]
    if names_a != names_b:
        checks.append(Check.equal("same operation sequence", names_a, names_b))
        return checks, found
    by_name = {o["op"]: o for o in compat_ops}
    prefix = f"type{'1v2' if iommu_type == 3 else '1'}"
    for op in type1_ops:
        diffs = op_differences(op, by_name[op["op"]], iommu_type)
        found.extend(diffs)
        if not diffs:
            checks.append(Check(f"{prefix}: {op['op']}", "same", _summary(op), True))
        for d in diffs:
            known = finding_key(d.op, d.aspect) in KNOWN_FINDINGS
            ok = bool(d.documented_by) or known
            note = d.documented_by or (
                "known finding: not in seed 002, seen on Linux 7.3"
                if known
                else "UNDOCUMENTED difference (not in seed 002)"
            )
            checks.append(Check(f"{prefix}: {d.op} [{d.aspect}]", d.type1, d.compat, ok, note))
    return checks, found


def _summary(op: Mapping[str, Any]) -> Any:
    if not op["ok"]:
        return op["errno"]
    value = op.get("value")
    return "success" if value is None else value if not isinstance(value, dict) else "same dict"


@scenario("vtd-compat-differential", tier=2, arches=("x86_64",), guest=_spec(), viommu="vtd")
def vtd_compat_differential(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Seed 002: the container sequence via type1 and iommufd compat, differences checked."""
    verdict = Verdict("vtd-compat-differential")
    edu = bind_edu(guest)
    mask = edu_dma_mask(guest)
    sequences: dict[str, Any] = {}
    differences: list[dict[str, Any]] = []
    for iommu_type in (3, 1):
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
    verdict.facts["undocumented"] = [d for d in differences if not d["documented_by"]]
    verdict.facts["sequences"] = sequences
    return verdict


def _dma_sanity(verdict: Verdict, label: str, ops: Iterable[Mapping[str, Any]]) -> None:
    """DMA through a mapped IOVA arrives and through an unmapped one does not, either backend."""
    for op in ops:
        name = str(op["op"])
        if name.startswith("DMA ") and op["ok"] and ("(mapped)" in name or "(A unmapped)" in name):
            want = "(mapped)" in name
            verdict.add(Check.equal(f"{label}: {name} arrived", want, op["value"]["arrived"]))


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
