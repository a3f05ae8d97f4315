"""Tier 3: QEMU's own nesting (``arm-smmuv3,accel=on`` / ``intel-iommu,...,fsts=on``) under test.

On a KVM host with a nesting-capable IOMMU, ``tier3-passthrough`` boots a guest with a
host device (``VIOMMU_HOST_DEVICE`` / ``--host-device``) behind QEMU's accelerated
vIOMMU; the guest's own IOMMU driver programs the vIOMMU while the agent makes the
device DMA, and QEMU's trace events (switched on over QMP; the allocations made while
QEMU starts through ``-trace``) show the vIOMMU / vDEVICE / nested HWPT allocations, the
invalidations forwarded and the faults delivered.

Here, with no such host, the same checks run one level down (``tier3-l2-smmuv3``): L1 is
an arm64 TCG guest at EL2 whose emulated SMMUv3 nests (IORT override), running QEMU
11.1.3 under KVM as L2's VMM with L1's edu passed through an accelerated vSMMU.
``tier3-l2-vtd`` is the VT-d analogue: QEMU refuses first-stage passthrough over L1's
emulated VT-d, which cannot nest (ecap NEST=0).  See ``harness.tier3``.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness import images
from harness.agent.client import AgentError
from harness.errors import DecodeError
from harness.firmware.iort import parse_iort
from harness.guest import Guest
from harness.qemu.machine import MachineError, QemuMachine
from harness.qemu.probe import MissingCapabilityError, probe
from harness.qemu.trace import TraceRecord, TraceWindow, set_trace_events
from harness.scenarios.base import EFFECT, Check, GuestSpec, Prepared, Verdict, scenario
from harness.scenarios.runner import prepare_hook
from harness.smmuv3 import parse_dmesg_events
from harness.tier3 import hostcheck
from harness.tier3.l1 import default_payload, l1_machine, payload_disk, start_l2, with_l1_image
from harness.tier3.l2 import startup_trace_args
from harness.tier3.passthrough import (
    HOST_DEVICE_ENV,
    IOMMUFD_EVENTS,
    SMMU_ACCEL_EVENTS,
    VTD_EVENTS,
    AccelSmmuTopology,
    Topology,
    VtdFirstStage,
    passthrough_machine,
    topology_for,
)
from harness.tier3.rmr import rmr_override
from harness.uapi import iommufd as uapi

EDU_ID = (0x1234, 0x11E8)
EDU_MASK = (1 << 48) - 1
KVM_REFUSAL = "SMMUv3 accel=on requires KVM with kernel-irqchip=on support"
#: guest CMDQ commands QEMU's accelerated SMMU forwards to the host (one ioctl each)
TLBI_COMMANDS = re.compile(r"SMMU_CMD_(TLBI_NH_\w+|TLBI_NSNH_ALL)")
FAULT_IOVA = 0x800_0000
#: the destination IOVA of ``tier3.dma``: its copy while unmapped faults too (not counted here)
REMAP_IOVA = 0x20_0000

Log = Callable[[str], None]


def _l1_spec(arch: str) -> GuestSpec:
    if arch == "arm64":
        return GuestSpec(
            viommu="smmuv3",
            viommu_options={"stage": "nested"},
            devices=(f"edu:mask={EDU_MASK:#x}",),
            firmware="uefi",
            memory_mb=3072,
        )
    return GuestSpec(viommu="vtd", devices=(f"edu:mask={EDU_MASK:#x}",), memory_mb=3072)


def _passthrough_spec(arch: str) -> GuestSpec:
    return GuestSpec(viommu=None, devices=(), firmware="uefi" if arch == "arm64" else "direct")


# -- machines ------------------------------------------------------------------------------


@prepare_hook("tier3-l2-smmuv3")
def prepare_l1_smmuv3(prepared: Prepared, log: Log) -> Prepared:
    """L1 on the l1 image, IORT override (CANWBS), EL2 for KVM, and L2's payload disk."""
    from harness.scenarios.smmuv3 import apply_iort_override

    on_l1 = replace(prepared, machine=with_l1_image(prepared.machine))
    overridden = apply_iort_override(on_l1, log)
    disk = payload_disk(default_payload("arm64"), log=log)
    machine = l1_machine(overridden.machine, disk=disk, el2=True)
    image = {**overridden.image, "flavor": "l1", "payload_disk": str(disk)}
    return replace(overridden, machine=machine, image=image)


@prepare_hook("tier3-l2-vtd")
def prepare_l1_vtd(prepared: Prepared, log: Log) -> Prepared:
    """L1 (x86_64) on the l1 image: no EL2 (TCG has no VMX) and no L2 boot, so no payload."""
    machine = l1_machine(with_l1_image(prepared.machine), disk=None, el2=False)
    return replace(prepared, machine=machine, image={**prepared.image, "flavor": "l1"})


@prepare_hook("tier3-passthrough")
def prepare_passthrough(prepared: Prepared, log: Log) -> Prepared:
    """The host checks, then the guest with the host device behind QEMU's accelerated vIOMMU.

    Refuses (``MissingCapabilityError``: a skip for pytest) naming what the host lacks.
    """
    bdf = os.environ.get(HOST_DEVICE_ENV)
    report = hostcheck.check_host(bdf)
    if report.skip_reason is not None:
        raise MissingCapabilityError(report.skip_reason)
    assert bdf is not None
    arch = prepared.machine.arch
    topology = topology_for(arch, (bdf,), _vtd_properties(prepared.binary))
    image = images.ensure(arch)
    machine = passthrough_machine(image, topology, accel="kvm")
    trace = startup_trace_args(_trace_patterns(topology))
    machine = machine.with_(extra_args=(*machine.extra_args, *trace))
    facts = {**prepared.image, "host": report.to_json(), "topology": topology.describe()}
    if isinstance(topology, AccelSmmuTopology):
        machine, facts["iort_rmr_override"] = rmr_override(
            machine, prepared.binary, ready_marker=prepared.ready_marker, log=log
        )
    return replace(prepared, machine=machine, image=facts)


def _vtd_properties(binary: str) -> frozenset[str]:
    try:
        return probe(binary).properties.get("intel-iommu", frozenset())
    except Exception:
        return frozenset()


def _trace_patterns(topology: Topology) -> tuple[str, ...]:
    return IOMMUFD_EVENTS + (SMMU_ACCEL_EVENTS if topology.kind == "smmuv3" else VTD_EVENTS)


# -- helpers -------------------------------------------------------------------------------


def _sync(vm: QemuMachine) -> None:
    sync = getattr(vm, "sync_logs", None)
    if callable(sync):
        sync()


def _count(records: Sequence[TraceRecord], name: str, **fields: int) -> int:
    return sum(
        1 for r in records if r.name == name and all(r.int_field(k) == v for k, v in fields.items())
    )


def _ok_result(record: TraceRecord) -> bool:
    """iommufd_backend_* traces end with the ioctl's result in parentheses: (0) is success."""
    return record.message.rstrip().endswith("(0)")


def _bind(
    guest: Guest, verdict: Verdict, label: str, vendor_device: tuple[int, int]
) -> tuple[str, str] | None:
    bdfs = guest.call("pci.find", vendor=vendor_device[0], device=vendor_device[1])
    verdict.add(Check.equal(f"{label}: device found", 1, len(bdfs)))
    if len(bdfs) != 1:
        return None
    device = guest.call("pci.bind_vfio", bdf=bdfs[0])["device"]
    verdict.add(Check.equal(f"{label}: bound to vfio-pci", "vfio-pci", device["driver"]))
    cdev = device.get("vfio_cdev")
    return (str(bdfs[0]), str(cdev)) if cdev else None


def _vsids(log: Path) -> list[int]:
    """The virtual SIDs QEMU gave vDEVICEs so far (the whole log: vDEVICEs come at boot)."""
    records = TraceWindow(log, start=0).records("iommufd_backend_alloc_vdev")
    return [r.int_field("virt_id") or 0 for r in records if _ok_result(r)]


def _iort(guest: Guest) -> bytes | None:
    try:
        return bytes(guest.call("system.read_file", path="/sys/firmware/acpi/tables/IORT"))
    except AgentError:
        return None


def _host_side(
    verdict: Verdict, label: str, info: Mapping[str, Any], iort: bytes | None, want: bool
) -> hostcheck.HostIommu:
    iommu = hostcheck.evaluate_hw_info(
        int(info["data_type"]), bytes(info["data"]), nest_parent=info.get("nest_parent"), iort=iort
    )
    verdict.facts["host_iommu"] = iommu.to_json()
    verdict.add(
        Check(
            f"{label}: IOMMU can nest (GET_HW_INFO)",
            want,
            iommu.nesting,
            iommu.nesting == want,
            iommu.reason,
        )
    )
    return iommu


# -- the checks shared by the real host and L2 ---------------------------------------------


def check_startup(verdict: Verdict, records: Sequence[TraceRecord], topology: Topology) -> None:
    """What QEMU allocated while it started: the vIOMMU and the abort / bypass HWPTs (SMMUv3)."""
    if topology.kind == "smmuv3":
        viommus = [
            r
            for r in records
            if r.name == "iommufd_backend_alloc_viommu"
            and r.int_field("type") == uapi.IOMMU_VIOMMU_TYPE_ARM_SMMUV3
        ]
        verdict.add(
            Check(
                "QEMU allocated an ARM_SMMUV3 vIOMMU",
                True,
                [r.message for r in viommus][:2],
                len(viommus) >= 1 and all(_ok_result(r) for r in viommus),
            )
        )
        nested = _nested_allocs(records, topology)
        verdict.add(
            Check(
                "QEMU pre-allocated abort and bypass nested HWPTs",
                ">= 2 ok",
                len(nested),
                len(nested) >= 2,
            )
        )
        verdict.add(
            Check(
                "vfio-pci attached to the accelerated vSMMU",
                ">= 1",
                _count(records, "smmuv3_accel_set_iommu_device"),
                _count(records, "smmuv3_accel_set_iommu_device") >= 1,
            )
        )


def _nested_allocs(records: Sequence[TraceRecord], topology: Topology) -> list[TraceRecord]:
    data_type = (
        uapi.IOMMU_HWPT_DATA_ARM_SMMUV3
        if topology.kind == "smmuv3"
        else uapi.IOMMU_HWPT_DATA_VTD_S1
    )
    return [
        r
        for r in records
        if r.name == "iommufd_backend_alloc_hwpt"
        and r.int_field("hwpt_type") == data_type
        and _ok_result(r)
    ]


def check_programming(
    verdict: Verdict,
    records: Sequence[TraceRecord],
    topology: Topology,
    vsids: Sequence[int] = (),
) -> None:
    """The guest's vIOMMU programming became nested HWPTs and forwarded invalidations."""
    nested = _nested_allocs(records, topology)
    verdict.add(
        Check(
            "guest's translation -> nested HWPT allocated on the host",
            ">= 1",
            len(nested),
            len(nested) >= 1,
        )
    )
    invalidations = [r for r in records if r.name == "iommufd_backend_invalidate_cache"]
    failed = [r.message for r in invalidations if not _ok_result(r)]
    forwarded = sum(r.int_field("entry_num") or 0 for r in invalidations)
    verdict.facts["invalidations_forwarded"] = forwarded
    if topology.kind == "smmuv3":
        vdevs = len(vsids) or len(
            [r for r in records if r.name == "iommufd_backend_alloc_vdev" and _ok_result(r)]
        )
        verdict.add(
            Check("vDEVICE allocated (guest SID -> host device)", ">= 1", vdevs, vdevs >= 1)
        )
        installs = [r for r in records if r.name == "smmuv3_accel_install_ste"]
        translate = [r for r in installs if "type=translate" in r.message]
        verdict.add(
            Check(
                "guest STE installed as a nested (translate) HWPT",
                ">= 1",
                len(translate),
                len(translate) >= 1,
            )
        )
        verdict.add(_forwarding_check(verdict, records, vsids))
    else:
        verdict.add(
            Check("guest invalidations forwarded", ">= 1", forwarded, forwarded >= 1, kind=EFFECT)
        )
    verdict.add(Check("no forwarded invalidation failed", [], failed, not failed, kind=EFFECT))


def _forwarding_check(
    verdict: Verdict, records: Sequence[TraceRecord], vsids: Sequence[int]
) -> Check:
    """Each guest TLBI (no SID) and each CFGI_CD of a vDEVICE's SID -> one forwarded entry.

    CFGI_CDs of emulated devices behind the vSMMU (the root port) stay in QEMU.
    """
    issued: list[str] = []
    for record in records:
        if record.name == "smmuv3_cmdq_opcode" and (m := TLBI_COMMANDS.search(record.message)):
            issued.append(m.group(1))
        elif record.name == "smmuv3_cmdq_cfgi_cd" and record.int_field("sid") in vsids:
            issued.append(f"CFGI_CD sid={record.int_field('sid'):#x}")
    forwarded = sum(
        r.int_field("entry_num") or 0
        for r in records
        if r.name == "iommufd_backend_invalidate_cache"
    )
    verdict.facts["guest_invalidation_commands"] = issued
    return Check(
        "every guest TLBI and vDEVICE CFGI_CD forwarded (IOMMU_HWPT_INVALIDATE entries)",
        len(issued),
        forwarded,
        len(issued) == forwarded and forwarded > 0,
        kind=EFFECT,
    )


def check_dma(verdict: Verdict, vm_guest: Guest, cdev: str, seed: int) -> None:
    """edu DMA through the guest's vIOMMU (data correct, remap needs the invalidation)."""
    result = vm_guest.call("tier3.dma", cdev=cdev, dma_mask=EDU_MASK, seed=seed, timeout=300)
    verdict.extend(result["rows"])
    info = result["facts"]["hw_info"]
    verdict.facts["guest_hw_info_type"] = info["data_type"]
    verdict.facts["first_dma_s"] = result["facts"]["first_dma_s"]


def check_fault_smmuv3(verdict: Verdict, vm_guest: Guest, cdev: str) -> list[Any]:
    """A DMA to an unmapped IOVA: the guest's SMMU driver reports the translation fault."""
    result = vm_guest.call("tier3.fault", cdev=cdev, dma_mask=EDU_MASK, timeout=120)
    events = parse_dmesg_events(result["log"])
    verdict.facts["guest_fault_log"] = result["log"][-2000:]
    verdict.facts["fault_seen_after_s"] = result["seconds"]
    iovas = [
        iova
        for e in events
        if e.event_id == 0x10
        and not (
            (iova := e.addresses.get("iova")) is not None
            and REMAP_IOVA <= iova < REMAP_IOVA + 0x1000
        )
    ]
    verdict.add(
        Check(
            "guest's SMMU event queue: F_TRANSLATION reported",
            ">= 1",
            len(iovas),
            bool(iovas),
            kind=EFFECT,
        )
    )
    hits = [a for a in iovas if a is not None and FAULT_IOVA <= a < FAULT_IOVA + 64]
    verdict.add(
        Check(
            "fault records name the faulting IOVAs (edu retries in 4-byte steps)",
            f"{FAULT_IOVA:#x}..+64",
            [hex(a) for a in iovas if a is not None][:4],
            bool(hits) and len(hits) == len(iovas),
            kind=EFFECT,
        )
    )
    return events


# -- scenarios -----------------------------------------------------------------------------


@scenario("tier3-l2-smmuv3", tier=3, arches=("arm64",), guest=_l1_spec, viommu="smmuv3")
def l2_smmuv3(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """L2 in L1: QEMU 11 arm-smmuv3,accel=on over L1's nesting SMMUv3; DMA, invalidation, fault."""
    verdict = Verdict("tier3-l2-smmuv3")
    seed = int(params["seed"])
    version = guest.call("system.run", argv=["qemu-system-aarch64", "--version"])
    verdict.facts["l2_qemu"] = bytes(version["stdout"]).decode().splitlines()[0]
    bound = _bind(guest, verdict, "L1 edu", EDU_ID)
    if bound is None:
        return verdict
    bdf, cdev = bound
    iort = _iort(guest)
    try:
        verdict.facts["l1_iort_canwbs"] = parse_iort(iort).canwbs if iort else None
    except DecodeError as exc:
        verdict.facts["l1_iort_canwbs"] = str(exc)
    _host_side(verdict, "L1 (L2's host)", guest.call("l1.hw_info", cdev=cdev), iort, True)
    topology = AccelSmmuTopology((bdf,))
    _check_tcg_refusal(verdict, guest, bdf, topology)

    # QEMU 10 traces smmuv3_record_event, QEMU 11 smmuv3_propagate_event
    l1_traces = ("smmuv3_*_event", "smmuv3_cmdq_cfgi_ste", "smmuv3_cmdq_tlbi_*")
    assert guest.vm.qmp is not None
    set_trace_events(guest.vm.qmp, l1_traces)
    artifacts = guest.artifacts / "l2"
    patterns = IOMMUFD_EVENTS + SMMU_ACCEL_EVENTS
    with start_l2(guest, bdf, topology, artifacts, trace_patterns=patterns, log=guest.log) as run:
        l2 = run.guest
        verdict.facts.update(run.facts)
        verdict.timings["l2_boot_s"] = round(l2.timings["boot_to_agent_s"], 1)
        verdict.timings["l2_boot_to_marker_s"] = round(l2.timings["boot_to_marker_s"], 1)
        assert l2.vm.qmp is not None
        enabled = set_trace_events(l2.vm.qmp, patterns)
        verdict.add(
            Check(
                "trace events enabled over L2 QEMU's QMP (through L1)",
                ">= 10",
                enabled,
                enabled >= 10,
            )
        )
        _sync(l2.vm)
        startup = TraceWindow(l2.vm.qemu_log)
        boot_records = TraceWindow(l2.vm.qemu_log, start=0)
        check_startup(verdict, boot_records.records(), topology)
        verdict.facts["vdev_at_boot"] = _count(boot_records.records(), "iommufd_backend_alloc_vdev")

        in_l2 = _bind(l2, verdict, "L2 edu (passed through)", EDU_ID)
        if in_l2 is None:
            return verdict
        check_dma(verdict, l2, in_l2[1], seed)
        verdict.add(
            Check.equal(
                "L2 sees an SMMUv3 (GET_HW_INFO type)",
                uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
                verdict.facts["guest_hw_info_type"],
            )
        )
        _sync(l2.vm)
        vsids = _vsids(l2.vm.qemu_log)
        verdict.facts["vsids"] = [hex(v) for v in vsids]
        check_programming(verdict, startup.records(), topology, vsids)

        l1_window = TraceWindow(guest.vm.qemu_log)
        fault_window = TraceWindow(l2.vm.qemu_log)
        check_fault_smmuv3(verdict, l2, in_l2[1])
        _sync(l2.vm)
        l1_events = l1_window.records("smmuv3_*_event")
        verdict.add(
            Check(
                "L1's SMMU recorded the fault (host QEMU trace)",
                ">= 1",
                len(l1_events),
                len(l1_events) >= 1,
            )
        )
        propagated = fault_window.records("smmuv3_propagate_event")
        verdict.add(
            Check(
                "every fault L1's SMMU recorded reached L2's event queue",
                len(l1_events),
                len(propagated),
                len(l1_events) == len(propagated),
            )
        )
        verdict.add(
            Check(
                "L2 QEMU injected it from L1's vEVENTQ into L2's event queue",
                ">= 1",
                len(propagated),
                len(propagated) >= 1,
            )
        )
        stderr = l2.vm.stderr_log.read_text(errors="replace")
        verdict.add(
            Check(
                "vEVENTQ: no lost or overflowed events",
                False,
                "vEVENTQ" in stderr,
                "vEVENTQ" not in stderr,
            )
        )
        verdict.facts["l2_artifacts"] = str(artifacts)
    return verdict


def _check_tcg_refusal(verdict: Verdict, l1: Guest, bdf: str, topology: Topology) -> None:
    """L2 under TCG through the same adapters: QEMU exits at once, the cause names why."""
    got = "L2 came up"
    try:
        with start_l2(
            l1,
            bdf,
            topology,
            l1.artifacts / "l2-tcg",
            accel="tcg",
            relax_rmr=False,
            run_id="l2-tcg",
            log=l1.log,
        ):
            pass
    except MachineError as exc:
        got = exc.cause
    verdict.facts["tcg_refusal"] = got
    verdict.add(
        Check(
            "L2 QEMU refuses accel=on under TCG (MachineError cause)",
            KVM_REFUSAL,
            got,
            KVM_REFUSAL in got and "exited with status 1" in got,
        )
    )


VTD_REFUSAL = "Failed to allocate hwpt: Operation not supported"
"""QEMU 11.1.3's words when the host refuses the nest-parent HWPT (EOPNOTSUPP, ecap NEST=0)."""


def vtd_option_sets(bdf: str) -> dict[str, VtdFirstStage]:
    """The intel-iommu option sets tried over L1's emulated VT-d.

    First-stage mode takes only aw-bits=48 (QEMU 11); without first stage the guest's
    address width must fit the host's (L1's emulated VT-d: 47 bits, so 39).
    """
    return {
        "fsts=on aw-bits=48": VtdFirstStage((bdf,)),
        "fsts=off aw-bits=39": VtdFirstStage(
            (bdf,), options={"caching-mode": True, "aw-bits": 39}, first_stage=False
        ),
    }


@scenario("tier3-l2-vtd", tier=3, arches=("x86_64",), guest=_l1_spec, viommu="vtd")
def l2_vtd(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """VT-d analogue: QEMU 11 intel-iommu,fsts=on over L1's emulated VT-d (no nesting)."""
    verdict = Verdict("tier3-l2-vtd")
    version = guest.call("system.run", argv=["qemu-system-x86_64", "--version"])
    verdict.facts["l2_qemu"] = bytes(version["stdout"]).decode().splitlines()[0]
    bound = _bind(guest, verdict, "L1 edu", EDU_ID)
    if bound is None:
        return verdict
    bdf, cdev = bound
    iommu = _host_side(verdict, "L1 (L2's host)", guest.call("l1.hw_info", cdev=cdev), None, False)
    verdict.add(Check("L1's VT-d: why not", "NEST=0", iommu.reason, "NEST=0" in iommu.reason))
    outcomes = {}
    for label, topology in vtd_option_sets(bdf).items():
        argv = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-display",
            "none",
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-S",
            "-monitor",
            "none",
            "-serial",
            "none",
            *topology.args("tcg"),
        ]
        result = guest.call("system.run", argv=f"timeout 20 {shlex.join(argv)}", timeout=60)
        stderr = bytes(result["stderr"]).decode(errors="replace").strip()
        outcomes[label] = {"status": result["status"], "stderr": stderr[-800:]}
        if topology.first_stage:
            verdict.add(
                Check(
                    f"{label}: QEMU refuses first-stage passthrough (no nest parent)",
                    VTD_REFUSAL,
                    stderr.splitlines()[-1:] or [""],
                    result["status"] not in (0, 124, None) and VTD_REFUSAL in stderr,
                )
            )
        else:
            verdict.add(
                Check(
                    f"{label}: without first stage (no nesting) QEMU starts",
                    "running at the timeout",
                    result["status"],
                    result["status"] == 124,
                    stderr[-200:],
                )
            )
    verdict.facts["outcomes"] = outcomes
    return verdict


@scenario("tier3-passthrough", tier=3, arches=("x86_64", "arm64"), guest=_passthrough_spec)
def passthrough(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Real KVM host: a host device behind QEMU's accelerated vIOMMU; DMA, traces, faults."""
    verdict = Verdict("tier3-passthrough")
    seed = int(params["seed"])
    topology = topology_for(guest.vm.machine.arch, (os.environ.get(HOST_DEVICE_ENV, "0:0.0"),))
    assert guest.vm.qmp is not None
    patterns = _trace_patterns(topology)
    startup = TraceWindow(guest.vm.qemu_log, start=0)
    check_startup(verdict, startup.records(), topology)
    set_trace_events(guest.vm.qmp, patterns)
    window = TraceWindow(guest.vm.qemu_log)
    host = hostcheck.inspect_device(os.environ.get(HOST_DEVICE_ENV, "0:0.0"))
    ids = (host.vendor or 0, host.device or 0)
    verdict.facts["host_device"] = host.to_json()
    bound = _bind(guest, verdict, "passed-through device", ids)
    if bound is None:
        return verdict
    if ids == EDU_ID:
        check_dma(verdict, guest, bound[1], seed)
        check_programming(verdict, window.records(), topology, _vsids(guest.vm.qemu_log))
        if topology.kind == "smmuv3":
            check_fault_smmuv3(verdict, guest, bound[1])
        else:
            result = guest.call("tier3.fault", cdev=bound[1], dma_mask=EDU_MASK, timeout=120)
            verdict.add(
                Check(
                    "guest sees the DMAR fault", True, result["reported"], bool(result["reported"])
                )
            )
    else:
        verdict.facts["note"] = (
            "generic device: the harness cannot make it DMA; checked the translation setup"
            " (vfio bind, IOAS attach, map/unmap in the guest -> nested HWPT and forwarded"
            " invalidations on the host) through QEMU's traces only"
        )
        verdict.extend(guest.call("tier3.attach", cdev=bound[1])["rows"])
        check_programming(verdict, window.records(), topology, _vsids(guest.vm.qemu_log))
    return verdict
