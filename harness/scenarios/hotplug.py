"""Hot-plug and reset under live nesting, driven through QMP (SMMUv3, arm64).

The guest starts with an empty PCIe root port.  ``smmuv3-hotplug``:

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
from harness.scenarios.base import EFFECT, Check, Verdict, scenario
from harness.scenarios.guest.smmuv3 import DATA_OFFSET, DATA_SLOT, IPA_BASE
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

HOT_ID = "hotedu"
PORT = "hotport0"
#: the nested set-up's stage-1 mapping (smmuv3.binding_case: data slots 0 and 1)
IOVA, GRANULE = 0x10_0000, 4096
CASE: dict[str, Any] = {"kind": "s1", "label": "hotplug", "granule": GRANULE, "iova": IOVA,
                        "asid": 1}  # fmt: skip
#: after the reset, the fresh set-up maps another IOVA; CASE's must then fault
AFTER_RESET = {**CASE, "label": "after-reset", "iova": 0x30_0000}
#: where CASE's destination IOVA (its second page) lands: data slot 1
DST_IPA = IPA_BASE + DATA_OFFSET + DATA_SLOT
#: 7.3's answers for the removed device's objects (see hotplug_release / after_unplug)
AFTER_UNPLUG = {
    "destroy vDEVICE": "ENOENT",
    "invalidate CFGI_CD for the vSID": "EIO",
    "vDEVICE for the removed device": "ENOENT",
    "destroy the nested HWPT": "success",
}
#: seconds for the guest to see a hot-added device, and for QEMU to finish an unplug
#: (pciehp waits 5 s after the attention button before it powers the slot off)
APPEAR_TIMEOUT = 60.0
#: what vfio-pci prints when it asks its user to let a device being removed go, with a
#: request eventfd ("Relaying device request to user") or without one (this harness)
VFIO_REQUEST = re.compile(r"Relaying device request to user|No device request channel registered")
UNPLUG_TIMEOUT = 90.0

HOTPLUG_SPEC = replace(SPEC, devices=("hotplug-port",))
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


def _plug(guest: Guest, verdict: Verdict, label: str) -> tuple[str, str] | None:
    """``device_add`` the edu, wait for the guest to see it, bind it: (BDF, cdev)."""
    device_add(_qmp(guest), "edu", id=HOT_ID, bus=PORT, dma_mask=EDU_MASK)
    bdf = _wait_for_edu(guest)
    verdict.add(Check.equal(f"{label}: the guest enumerates the hot-added edu", True, bool(bdf)))
    if bdf is None:
        return None
    bound = guest.call("pci.bind_vfio", bdf=bdf)["device"]
    verdict.add(Check.equal(f"{label}: edu bound to vfio-pci", "vfio-pci", bound["driver"]))
    return bdf, str(bound["vfio_cdev"])


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


def _unplug(guest: Guest, verdict: Verdict, bdf: str) -> bool:
    """``device_del`` with the set-up live; the guest lets go; QEMU finishes the unplug."""
    qmp = _qmp(guest)
    mark = guest.call("system.dmesg_mark")
    since = device_del(qmp, HOT_ID)
    relayed = ""
    deadline = time.monotonic() + 30.0
    while not relayed and time.monotonic() < deadline:  # vfio-pci asks its user to let go
        log = str(guest.call("system.dmesg", since=mark))
        relayed = next((line for line in log.splitlines() if VFIO_REQUEST.search(line)), "")
        time.sleep(0.5)
    deleted_early = bool(qmp.events("DEVICE_DELETED", since=since))
    verdict.add(
        Check.effect(
            "device_del with the device open: vfio-pci relays the request, QEMU waits",
            [True, False],
            [bool(relayed), deleted_early],
            relayed.strip(),
        )
    )
    gone = guest.call("smmuv3.hotplug_release")
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
    found = guest.call("smmuv3.after_unplug")
    for what, want in AFTER_UNPLUG.items():
        verdict.add(Check.effect(f"after the unplug: {what}", want, found.get(what)))
    return True


def _stale_probe(guest: Guest, verdict: Verdict, before: Mapping[str, Any]) -> None:
    """After the reset: a DMA to the IOVA mapped before it must fault, not land."""
    probe = guest.call(
        "smmuv3.stale_probe",
        src_iova=AFTER_RESET["iova"],
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


@scenario("smmuv3-hotplug", tier=2, arches=("arm64",), guest=HOTPLUG_SPEC, viommu="smmuv3")
def smmuv3_hotplug(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """edu hot-added, unplugged and re-added under a live nested set-up; then system_reset."""
    verdict = Verdict("smmuv3-hotplug")
    if not require_override(guest, verdict):
        return verdict
    verdict.add(Check.effect("before device_add: no edu in QEMU", [], _edus_in_qemu(guest)))
    plugged = _plug(guest, verdict, "hot-add")
    if plugged is None:
        return verdict
    _session(guest, verdict, *plugged, "hot-add")
    if not _dma(guest, verdict, CASE, "hot-added edu"):
        return verdict
    if not _unplug(guest, verdict, plugged[0]):
        return verdict
    replugged = _plug(guest, verdict, "re-add")
    if replugged is None:
        return verdict
    rebound = guest.call("smmuv3.hotplug_rebind", cdev=replugged[1], bdf=replugged[0])
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
    bound = guest.call("pci.bind_vfio", bdf=bdf)["device"]
    _session(guest, verdict, bdf, str(bound["vfio_cdev"]), "after the reset")
    if _dma(guest, verdict, AFTER_RESET, "after the reset"):
        _stale_probe(guest, verdict, before)
    guest.call("smmuv3.close_session")
    return verdict
