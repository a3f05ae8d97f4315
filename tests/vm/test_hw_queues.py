"""Tier 2: the emulated vIOMMU's own queues, read from the host, against what the guest saw.

arm64 (QEMU's SMMUv3, stage=nested, IORT override): for user invalidations issued through
IOMMU_HWPT_INVALIDATE on the vIOMMU, the CMDQ holds the guest kernel's converted commands
(physical SID, the vIOMMU's VMID as the device's STE holds it, then CMD_SYNC); the faults
the guest provokes are in the EVTQ with the physical SID and in the vEVENTQ with the
virtual one, record by record; the mutation (expecting the vSID) trips on real data.
x86_64 (q35 + intel-iommu): the invalidation queue holds decodable descriptors after the
guest's own DMA API use, and the FRCD verdict is clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.commands import rings as rings_cmd
from harness.pytest_plugin import kvm_skip_reason, qemu_for
from harness.rings.veventq import parse_veventq
from harness.scenarios.base import Verdict
from harness.scenarios.hw_queues import (
    cmdq_invalidation_rows,
    context_from_hardware,
    evtq_veventq_rows,
    evtq_window_verdict,
    smmu_queue_reader,
)
from harness.smmuv3 import VsmmuContext, decode_id_regs

pytestmark = [pytest.mark.tier2]


def _boot_smmuv3(request: pytest.FixtureRequest, artifacts: Path) -> Any:
    from harness.errors import PrerequisiteError
    from harness.guest import Guest
    from harness.qemu.probe import MissingCapabilityError
    from harness.scenarios.smmuv3 import prepare_smmuv3

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("arm64", accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], "arm64")
    try:
        prepared = prepare_smmuv3("smmuv3-invalidation", qemu=qemu, accel=accel)
    except (MissingCapabilityError, PrerequisiteError) as exc:
        pytest.skip(str(exc))
    return Guest(prepared.machine, artifacts, ready_marker=prepared.ready_marker,
                 qemu=prepared.binary, name="hw-queues")  # fmt: skip


@pytest.mark.smmuv3
@pytest.mark.arm64
def test_smmuv3_cmdq_and_evtq_from_the_hardware(
    request: pytest.FixtureRequest, artifacts_dir: Path
) -> None:
    from harness.scenarios.smmuv3 import VSID, _open_session, invalidation_cases

    with _boot_smmuv3(request, artifacts_dir / "smmuv3") as guest:
        verdict = Verdict("hw-queues")
        session = _open_session(guest, verdict)
        assert session is not None, verdict.summary()
        psid = int(session["sid"])
        base = VsmmuContext.from_id_regs(
            decode_id_regs({k: int(v) for k, v in session["idrs"].items()}),
            vsid_to_sid={VSID: psid},
        )
        rows = []
        with smmu_queue_reader(guest.vm.qmp) as hw:
            for case in invalidation_cases(VSID):
                if case.label not in ("cfgi-cd", "tlbi-nh-va-range", "tlbi-nsnh-all"):
                    continue
                assert case.commands is not None
                staged = guest.call("smmuv3.invalidation_stage", case=case.stage_args())
                assert staged["attach"] == "success", staged
                before = hw.snapshot()
                applied = guest.call("smmuv3.invalidation_apply", commands=list(case.commands))
                after = hw.snapshot()
                assert applied["errno"] == "success" and applied["after"] == "B", applied
                ctx = context_from_hardware(base, hw, after, psid)
                assert ctx.vmid > 0, "the nest parent's VMID in the device's STE"
                case_rows = cmdq_invalidation_rows(case.label, case.commands, ctx, before,
                                                   after, physical_sid=psid)  # fmt: skip
                rows += case_rows
                if case.label == "cfgi-cd":  # the mutation, on real data
                    wrong = context_from_hardware(
                        VsmmuContext(vsid_to_sid={VSID: VSID}), hw, after, psid
                    )
                    mutated = cmdq_invalidation_rows(case.label, case.commands, wrong, before,
                                                     after, physical_sid=psid)  # fmt: skip
                    assert not mutated[0].ok and not mutated[1].ok, mutated

            before = hw.snapshot()
            expected = []
            for kind in ("translation", "bad-cd"):
                result = guest.call("smmuv3.fault_case", kind=kind, label=f"fault-{kind}")
                assert "error" not in result, result
                expected += result["expect"]
            vevents = parse_veventq(bytes(guest.call("smmuv3.read_events", settle=1.5)))
            after = hw.snapshot()
            window = [data for _, data in after.evtq.produced_since(before.evtq)]
            rows += evtq_veventq_rows("faults", window, vevents, {psid: VSID})
            ring = evtq_window_verdict(before, after)
            assert ring.ok and ring.records_seen == len(window) >= 2, ring.summary()

        for record in rings_cmd.collect(guest.vm.qmp, last=6, pause=True):
            print(rings_cmd.text_line(record))
        guest.call("smmuv3.close_session")
    for row in rows:
        print(("ok  " if row.ok else "FAIL"), row.name, row.expected, "/", row.got)
    assert rows and all(r.ok for r in rows), [r for r in rows if not r.ok]


@pytest.mark.vtd
@pytest.mark.x86_64
def test_vtd_invalidation_queue_and_fault_records(shared_guest: Any) -> None:
    guest = shared_guest("x86_64", "vtd", devices=("edu",))
    records = rings_cmd.collect(guest.vm.qmp, last=16, pause=True)
    for record in records:
        print(rings_cmd.text_line(record))
    head = records[0]
    assert head["queue"] == "vtd" and int(head["GSTS"], 16) & 1 << 26, head  # QIES
    descriptors = [r for r in records if r["queue"] == "iq" and "slot" in r]
    assert descriptors, "the guest's VT-d driver queued no invalidation"
    assert not [r for r in descriptors if "error" in r], descriptors
    assert {r["name"] for r in descriptors} & {"InvalidationWait"}, descriptors
    (frcd,) = [r for r in records if r.get("check") == "vtd-fault-recording"]
    assert frcd["ok"], frcd


@pytest.mark.smmuv3
@pytest.mark.arm64
@pytest.mark.parametrize("reader", [True, False], ids=["reader-on", "reader-off"])
def test_invalidation_scenario_passes_with_the_reader_on_and_off(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int, reader: bool
) -> None:
    """Reading the rings does not change the guest's behaviour; on, it adds the CMDQ rows."""
    from harness.scenarios.base import get
    from harness.scenarios.runner import execute, resolve_params
    from harness.scenarios.smmuv3 import prepare_smmuv3

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("arm64", accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], "arm64")
    prepared = prepare_smmuv3("smmuv3-invalidation", qemu=qemu, accel=accel)
    scenario = get("smmuv3-invalidation")
    params = {"cases": ["cfgi-cd", "tlbi-nh-va", "tlbi-nsnh-all"], "hw_queues": reader}
    verdict = execute(scenario, prepared, resolve_params(scenario, params, seed), artifacts_dir)
    print(verdict.table())
    assert verdict.passed, verdict.summary()
    cmdq_rows = [c for c in verdict.checks if "CMDQ" in c.name]
    assert verdict.facts["hw_queue_reader"] is reader
    assert len(cmdq_rows) == (3 * 2 + 1 if reader else 0), [c.name for c in cmdq_rows]
    assert all(c.kind == "effect" for c in cmdq_rows)


@pytest.mark.vtd
@pytest.mark.x86_64
def test_vtd_page_request_queue_on_qemu11(
    request: pytest.FixtureRequest, artifacts_dir: Path
) -> None:
    """QEMU 11's ``svm=on`` gives ECAP.PRS: the guest kernel sets up its page request queue,
    which the reader finds through PQA and ``check_page_request_queue`` judges (empty: edu
    sends no page requests).  QEMU 10.0.2 has no ``svm`` property: a skip naming it."""
    from harness import images
    from harness.errors import PrerequisiteError
    from harness.guest import Guest
    from harness.profiles import guest_machine, make_viommu
    from harness.qemu.probe import MissingCapabilityError, adapt_machine, probe, resolve_binary

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("x86_64", accel):
        pytest.skip(reason)
    image = images.ensure("x86_64")
    options = {
        "scalable_mode": True,
        "flts": True,
        "pasid_mode": True,
        "device_iotlb": True,
        "svm": True,
    }  # fmt: skip (what QEMU 11 requires with svm=on)
    machine = guest_machine(image, make_viommu("vtd", options), ("edu",), accel=accel)
    try:
        binary = resolve_binary("x86_64", "11")
        machine = adapt_machine(machine, probe(binary))
    except (MissingCapabilityError, PrerequisiteError) as exc:
        pytest.skip(str(exc))
    with Guest(machine, artifacts_dir, ready_marker=image.ready_marker, qemu=binary,
               name="prq") as guest:  # fmt: skip
        records = rings_cmd.collect(guest.vm.qmp, last=4, pause=True)
    for record in records:
        print(rings_cmd.text_line(record))
    head = records[0]
    assert int(head["ECAP"], 16) >> 29 & 1, head  # ECAP.PRS
    (prq,) = [r for r in records if r["queue"] == "prq" and "address" in r]
    assert prq["bytes"] == 4096 << (int(head["PQA"], 16) & 7), prq
    (verdict,) = [r for r in records if r.get("check") == "vtd-prq"]
    assert verdict["ok"], verdict


@pytest.mark.parametrize(
    ("name", "arch", "hardware_rows"),
    [
        pytest.param("smmuv3-fault-rings", "arm64", ("EVTQ",),
                     marks=[pytest.mark.smmuv3, pytest.mark.arm64]),
        pytest.param("vtd-dma-faults", "x86_64", ("unit:",),
                     marks=[pytest.mark.vtd, pytest.mark.x86_64]),
    ],
)  # fmt: skip
def test_reader_off_the_scenario_passes_without_its_hardware_rows(
    request: pytest.FixtureRequest, artifacts_dir: Path, seed: int, name: str, arch: str,
    hardware_rows: tuple[str, ...],
) -> None:  # fmt: skip
    """The reader only observes: with it off the scenario passes on the guest's own view
    alone (the registered-scenario tests run it on, with the hardware rows)."""
    from harness.scenarios.runner import run_scenario

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason(arch, accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], arch)
    verdict = run_scenario(name, arch, params={"hw_queues": False}, qemu=qemu, accel=accel,
                           seed=seed, artifacts=artifacts_dir)  # fmt: skip
    print(verdict.table())
    assert verdict.passed, verdict.summary()
    assert verdict.facts["hw_queue_reader"] is False
    assert not [c.name for c in verdict.checks if c.name.startswith(hardware_rows)]
