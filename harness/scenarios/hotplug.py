"""Hot-plug and reset under a live IOMMU set-up, driven through QMP (SMMUv3 and VT-d).

The guest starts with an empty PCIe root port.  ``smmuv3-hotplug`` (arm64):

1. ``device_add`` an edu into the port; the guest finds it, binds it to vfio-pci and builds
   the nested set-up (nest parent, vIOMMU, vDEVICE with vSID 0x42, vEVENTQ, a nested HWPT
   over a stage-1 CD table); a DMA proves it.
2. ``device_del`` it while that set-up is live.  vfio-pci relays the removal to its user
   and waits; the guest then closes the device fd only, and QEMU reports
   ``DEVICE_DELETED``.  The removed device's objects answer as 7.3 documents: its vDEVICE
   is a tombstone (destroy: ENOENT), its vSID resolves to nothing (an invalidation naming
   it: EIO), its device ID is gone (a vDEVICE for it: ENOENT), the nested HWPT it used
   goes away cleanly.  QEMU's ``query-pci`` and the guest's sysfs no longer list it.
3. ``device_add`` it again: bound to the same iommufd, a vDEVICE with the same vSID on the
   same vIOMMU, and a DMA proves the set-up once more.
4. ``system_reset`` with that set-up live: the guest comes back (the hot-added edu kept,
   QEMU keeps hot-plugged devices across a reset), a fresh session's DMA works, and a DMA
   through the IOVA that worked before the reset faults instead of landing (no stale
   STE, CD or IOTLB entry survived).

``vtd-hotplug`` (x86_64, q35 + intel-iommu) does the same with a paging domain (edu
attached to an IOAS): after the unplug a HWPT for the removed device's ID is ENOENT and
its IOAS unmaps and is destroyed (no reference left); after the reset the old IOVA's
DMA is a DMAR fault in the guest's dmesg and in the unit's fault-recording registers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from harness.agent.client import AgentError
from harness.guest import Guest
from harness.qemu.hotplug import device_add, device_del, pci_devices, wait_deleted
from harness.qemu.qmp import QmpError, QmpSession
from harness.rings import ExpectedFault, check_veventq
from harness.scenarios.base import EFFECT, Check, GuestSpec, Verdict, scenario
from harness.scenarios.guest.smmuv3 import DATA_OFFSET, DATA_SLOT, IPA_BASE
from harness.scenarios.hw_queues import frcd_for, vtd_unit_reader
from harness.scenarios.runner import prepare_hook
from harness.scenarios.smmuv3 import (
    EDU_ID,
    EDU_MASK,
    SPEC,
    VSID,
    apply_iort_override,
    event_summary,
    require_override,
)
from harness.scenarios.vtd import DEFAULT_DMA_MASK, requester_id
from harness.vtd import dmar_faults

HOT_ID = "hotedu"
PORT = "hotport0"
#: the nested set-up's stage-1 mapping (smmuv3.binding_case: data slots 0 and 1)
IOVA, GRANULE = 0x10_0000, 4096
CASE: dict[str, Any] = {"kind": "s1", "granule": GRANULE, "iova": IOVA, "asid": 1}
#: after the reset, the fresh set-up maps another IOVA (parameter ``reset_iova``; the
#: mutation test maps IOVA again, so the old IOVA's DMA lands); CASE's must then fault
RESET_IOVA = 0x30_0000
#: where CASE's destination IOVA (its second page) lands: data slot 1
DST_IPA = IPA_BASE + DATA_OFFSET + DATA_SLOT
#: 7.3's answers for the removed device's objects (guest smmuv3.after_unplug)
AFTER_UNPLUG = {
    "destroy vDEVICE": "ENOENT",
    "invalidate CFGI_CD for the vSID": "EIO",
    "vDEVICE for the removed device": "ENOENT",
    "destroy the nested HWPT": "success",
}
#: what vfio-pci prints when it asks its user to let a device being removed go, with a
#: request eventfd ("Relaying device request to user") or without one (this harness)
VFIO_REQUEST = re.compile(r"Relaying device request to user|No device request channel registered")
#: seconds for the guest to see a hot-added device, and for QEMU to finish an unplug
#: (pciehp waits 5 s after the attention button before it powers the slot off)
APPEAR_TIMEOUT = 60.0
UNPLUG_TIMEOUT = 90.0
#: seconds the guest keeps the device after vfio-pci asked for it, before releasing it
HOLD_S = 2.0

HOTPLUG_SPEC = replace(SPEC, devices=("hotplug-port",))
VTD_SPEC = GuestSpec(viommu="vtd", devices=("hotplug-port",))
#: VT-d: the IOAS maps a source page at the IOVA and a destination page after it
VTD_IOVA = 0x10_0000
#: 7.3's answers for the removed device's objects (guest vtd.after_unplug)
VTD_AFTER_UNPLUG = {
    "HWPT for the removed device": "ENOENT",
    "unmap the IOAS": "success",
    "destroy the IOAS": "success",
}
prepare_hook("smmuv3-hotplug")(apply_iort_override)


def _qmp(guest: Guest) -> QmpSession:
    if guest.vm.qmp is None:
        raise AgentError("the machine has no QMP connection")
    return guest.vm.qmp


def _edus_in_qemu(guest: Guest) -> list[str]:
    return [
        f"{d['bus']}:{d['slot']}.{d['function']} {d['qdev_id']}"
        for d in pci_devices(_qmp(guest))
        if (d["vendor"], d["device"]) == EDU_ID
    ]


def _wait_for_edu(guest: Guest) -> str | None:
    """The edu's BDF once the guest has enumerated it, or None at the timeout."""
    deadline = time.monotonic() + APPEAR_TIMEOUT
    while time.monotonic() < deadline:
        found = guest.call("pci.find", vendor=EDU_ID[0], device=EDU_ID[1])
        if found:
            return str(found[0])
        time.sleep(0.5)
    return None


def _plug(guest: Guest, verdict: Verdict, label: str, dma_mask: int | None = None) -> str | None:
    """``device_add`` the edu; its BDF once the guest has enumerated it."""
    props = {} if dma_mask is None else {"dma_mask": dma_mask}
    device_add(_qmp(guest), "edu", id=HOT_ID, bus=PORT, **props)
    bdf = _wait_for_edu(guest)
    verdict.add(Check.equal(f"{label}: the guest enumerates the hot-added edu", True, bool(bdf)))
    return bdf


def _bind(guest: Guest, verdict: Verdict, bdf: str, label: str) -> str:
    """edu on vfio-pci: its cdev."""
    bound = guest.call("pci.bind_vfio", bdf=bdf)["device"]
    verdict.add(Check.equal(f"{label}: edu bound to vfio-pci", "vfio-pci", bound["driver"]))
    return str(bound["vfio_cdev"])


def _dma(guest: Guest, verdict: Verdict, case: Mapping[str, Any], what: str) -> bool:
    """The case's nested HWPT attached and a DMA through it; the effect row says it landed."""
    result = guest.call("smmuv3.binding_case", case={**case, "label": what})
    verdict.extend(result.get("rows", []))
    facts = result["facts"]
    ok = bool(facts.get("dma_ok"))
    verdict.add(Check.effect(f"{what}: DMA IOVA -> S1 -> IPA -> S2 -> memory, bytes", True, ok))
    verdict.add(
        Check.effect(f"{what}: no vEVENTQ records", [], event_summary(bytes(facts["events"])))
    )
    return ok


def _session(guest: Guest, verdict: Verdict, bdf: str, cdev: str, what: str) -> None:
    session = guest.call("smmuv3.open_session", cdev=cdev, bdf=bdf, vsid=VSID, dma_mask=EDU_MASK)
    ids = [session["nest_parent"], session["viommu"], session["vdevice"], session["veventq"]]
    verdict.add(Check.equal(f"{what}: nest parent, vIOMMU, vDEVICE, vEVENTQ (distinct ids)", 4,
                            len({i for i in ids if i > 0})))  # fmt: skip


def _unplug(
    guest: Guest, verdict: Verdict, bdf: str, guest_half: str, after: Mapping[str, str]
) -> bool:
    """``device_del`` with the set-up live; the guest lets go (``<guest_half>.plug_release``:
    the device fd only); QEMU finishes the unplug; the removed device's objects answer
    ``<guest_half>.after_unplug`` as ``after`` predicts."""
    qmp = _qmp(guest)
    mark = guest.call("system.dmesg_mark")
    since = device_del(qmp, HOT_ID)
    relayed = ""
    deadline = time.monotonic() + 30.0
    while not relayed and time.monotonic() < deadline:  # vfio-pci asks its user to let go
        log = str(guest.call("system.dmesg", since=mark))
        relayed = next((line for line in log.splitlines() if VFIO_REQUEST.search(line)), "")
        time.sleep(0.5)
    time.sleep(HOLD_S)  # an unplug that did not wait for the release would be over by now
    deleted_early = bool(qmp.events("DEVICE_DELETED", since=since))
    verdict.add(
        Check.effect(
            "device_del with the device open: vfio-pci relays the request, QEMU waits",
            [True, False],
            [bool(relayed), deleted_early],
            relayed.strip(),
        )
    )
    gone = guest.call(f"{guest_half}.plug_release")
    verdict.facts["released"] = gone
    took: float | None = None
    try:
        took = wait_deleted(
            qmp, HOT_ID, since, UNPLUG_TIMEOUT,
            abort=lambda: guest.vm.health(include_hang=True).cause,
        )  # fmt: skip
        verdict.timings["unplug_s"] = round(took, 1)
    except QmpError as exc:
        verdict.facts["unplug_error"] = str(exc)
    verdict.add(
        Check.effect(
            "DEVICE_DELETED once the device fd is closed", True, took is not None,
            verdict.facts.get("unplug_error", ""),
        )
    )  # fmt: skip
    if took is None:
        return False
    present = guest.run(f"test -e /sys/bus/pci/devices/{bdf}", timeout=30).status == 0
    verdict.add(
        Check.effect(
            "the edu is gone: QEMU's query-pci, the guest's sysfs", [[], False],
            [_edus_in_qemu(guest), present],
        )
    )  # fmt: skip
    found = guest.call(f"{guest_half}.after_unplug")
    for what, want in after.items():
        verdict.add(Check.effect(f"after the unplug: {what}", want, found.get(what)))
    return True


def _stale_probe(guest: Guest, verdict: Verdict, before: Mapping[str, Any], src_iova: int) -> None:
    """After the reset: a DMA to the IOVA mapped before it must fault, not land."""
    probe = guest.call(
        "smmuv3.stale_probe",
        src_iova=src_iova,
        old_iova=before["dst_iova"],
        old_ipa=before["dst_ipa"],
        label="stale",
    )
    verdict.add(
        Check.effect("after the reset: a DMA to the old IOVA does not land", False, probe["landed"])
    )
    want = ExpectedFault(sid=VSID, address=before["dst_iova"], reason="F_TRANSLATION",
                         is_write=True, label="old IOVA")  # fmt: skip
    ring = check_veventq(bytes(probe["events"]), [want], strict=False)
    verdict.add(
        Check(
            "after the reset: the old IOVA faults (F_TRANSLATION, vSID, address)",
            "1 matched",
            ring.summary(),
            ring.ok and len(ring.matched) == 1,
            kind=EFFECT,
        )
    )


@scenario(
    "smmuv3-hotplug",
    tier=2,
    arches=("arm64",),
    guest=HOTPLUG_SPEC,
    viommu="smmuv3",
    defaults={"reset_iova": RESET_IOVA},
)
def smmuv3_hotplug(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """edu hot-added, unplugged and re-added under a live nested set-up; then system_reset."""
    verdict = Verdict("smmuv3-hotplug")
    if not require_override(guest, verdict):
        return verdict
    verdict.add(Check.effect("before device_add: no edu in QEMU", [], _edus_in_qemu(guest)))
    bdf = _plug(guest, verdict, "hot-add", EDU_MASK)
    if bdf is None:
        return verdict
    _session(guest, verdict, bdf, _bind(guest, verdict, bdf, "hot-add"), "hot-add")
    if not _dma(guest, verdict, CASE, "hot-added edu"):
        return verdict
    if not _unplug(guest, verdict, bdf, "smmuv3", AFTER_UNPLUG):
        return verdict
    bdf = _plug(guest, verdict, "re-add", EDU_MASK)
    if bdf is None:
        return verdict
    cdev = _bind(guest, verdict, bdf, "re-add")
    rebound = guest.call("smmuv3.plug_rebind", cdev=cdev, bdf=bdf)
    verdict.facts["rebound"] = rebound
    verdict.add(Check.equal("re-add: a vDEVICE with the same vSID on the same vIOMMU", True,
                            rebound["vdevice"] > 0))  # fmt: skip
    if not _dma(guest, verdict, CASE, "re-added edu"):
        return verdict
    before = {"dst_iova": IOVA + GRANULE, "dst_ipa": DST_IPA}
    verdict.timings["reset_s"] = round(guest.system_reset(), 1)
    bdf = _wait_for_edu(guest)
    verdict.add(Check.equal("after the reset: the hot-added edu is still there", True,
                            bool(bdf)))  # fmt: skip
    if bdf is None:
        return verdict
    _session(guest, verdict, bdf, _bind(guest, verdict, bdf, "after the reset"), "after the reset")
    after_reset = {**CASE, "iova": int(params["reset_iova"])}
    if _dma(guest, verdict, after_reset, "after the reset"):
        _stale_probe(guest, verdict, before, after_reset["iova"])
    guest.call("smmuv3.close_session")
    return verdict


def _vtd_dma(guest: Guest, verdict: Verdict, result: Mapping[str, Any], what: str) -> bool:
    verdict.add(Check.effect(f"{what}: DMA through the paging domain, bytes", True,
                             result["equal"]))  # fmt: skip
    return bool(result["equal"])


def _vtd_stale_probe(guest: Guest, verdict: Verdict, bdf: str) -> None:
    """After the reset: edu writes through the old destination IOVA; it must fault (dmesg,
    and the unit's fault-recording registers read over QMP), not land."""
    old = VTD_IOVA + 0x1000
    probe = guest.call("vtd.plug_stale_probe", old_iova=VTD_IOVA)
    verdict.add(
        Check.effect("after the reset: a DMA to the old IOVA does not land", False, probe["landed"])
    )
    faults = [(hex(f.sid), hex(f.address), f.is_write) for f in dmar_faults(probe["dmesg"])]
    verdict.add(
        Check.effect(
            "after the reset: the old IOVA is a DMAR fault in dmesg (sid, addr, write)",
            [(hex(requester_id(bdf)), hex(old), True)],
            faults,
        )
    )
    with vtd_unit_reader(_qmp(guest)) as unit:
        found = frcd_for(unit.snapshot(), old)
    verdict.add(
        Check.effect(
            "after the reset: the fault in the unit's FRCD (sid, write)",
            (hex(requester_id(bdf)), True),
            (hex(found[0].sid), found[0].is_write) if found else None,
        )
    )


@scenario(
    "vtd-hotplug",
    tier=2,
    arches=("x86_64",),
    guest=VTD_SPEC,
    viommu="vtd",
    defaults={"reset_iova": RESET_IOVA},
)
def vtd_hotplug(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """edu hot-added, unplugged and re-added while attached to a paging domain; system_reset."""
    verdict = Verdict("vtd-hotplug")
    verdict.add(Check.effect("before device_add: no edu in QEMU", [], _edus_in_qemu(guest)))
    bdf = _plug(guest, verdict, "hot-add")
    if bdf is None:
        return verdict
    opened = guest.call("vtd.plug_open", cdev=_bind(guest, verdict, bdf, "hot-add"),
                        dma_mask=DEFAULT_DMA_MASK, iova=VTD_IOVA)  # fmt: skip
    if not _vtd_dma(guest, verdict, opened, "hot-added edu"):
        return verdict
    if not _unplug(guest, verdict, bdf, "vtd", VTD_AFTER_UNPLUG):
        return verdict
    bdf = _plug(guest, verdict, "re-add")
    if bdf is None:
        return verdict
    again = guest.call("vtd.plug_reattach", cdev=_bind(guest, verdict, bdf, "re-add"),
                       iova=VTD_IOVA)  # fmt: skip
    if not _vtd_dma(guest, verdict, again, "re-added edu"):
        return verdict
    verdict.timings["reset_s"] = round(guest.system_reset(), 1)
    bdf = _wait_for_edu(guest)
    verdict.add(Check.equal("after the reset: the hot-added edu is still there", True,
                            bool(bdf)))  # fmt: skip
    if bdf is None:
        return verdict
    fresh = guest.call("vtd.plug_open", cdev=_bind(guest, verdict, bdf, "after the reset"),
                       dma_mask=DEFAULT_DMA_MASK, iova=int(params["reset_iova"]))  # fmt: skip
    if _vtd_dma(guest, verdict, fresh, "after the reset"):
        _vtd_stale_probe(guest, verdict, bdf)
    guest.call("vtd.plug_close")
    return verdict
