"""Smoke scenario: a vIOMMU guest whose edu device is handed to vfio-pci and iommufd.

Proves the whole chain a nesting scenario stands on: the guest's IOMMU driver owns the
device (an IOMMU group), vfio-pci binds it and exposes a cdev, ``/dev/iommu`` exists,
and opening the cdev makes the guest program the vIOMMU, which QEMU's trace shows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from harness.guest import Guest
from harness.qemu.trace import TraceWindow, set_trace_events
from harness.scenarios.base import Check, GuestSpec, Verdict, scenario

EDU_ID = (0x1234, 0x11E8)
TRACE = {"x86_64": "vtd_*", "arm64": "smmuv3_*"}
VIOMMU = {"x86_64": "vtd", "arm64": "smmuv3"}


def _spec(arch: str) -> GuestSpec:
    return GuestSpec(viommu=VIOMMU[arch], devices=("edu",))


@scenario("smoke-vfio-edu", tier=2, arches=("x86_64", "arm64"), guest=_spec, viommu="any")
def smoke_vfio_edu(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """edu bound to vfio-pci behind the vIOMMU; cdev, /dev/iommu and a vIOMMU trace."""
    arch = guest.vm.machine.arch
    verdict = Verdict("smoke-vfio-edu")
    bdfs = guest.call("pci.find", vendor=EDU_ID[0], device=EDU_ID[1])
    verdict.add(Check.equal("edu devices found", 1, len(bdfs)))
    if len(bdfs) != 1:
        return verdict
    assert guest.vm.qmp is not None
    pattern = TRACE[arch]
    verdict.facts["trace_events_enabled"] = set_trace_events(guest.vm.qmp, [pattern])
    window = TraceWindow(guest.vm.qemu_log)
    bound = guest.call("pci.bind_vfio", bdf=bdfs[0])["device"]
    verdict.add(Check.equal("edu driver", "vfio-pci", bound["driver"]))
    verdict.add(Check("edu has an IOMMU group", "a group", bound["iommu_group"],
                      bound["iommu_group"] is not None))  # fmt: skip
    verdict.add(Check.equal("vfio cdev", "/dev/vfio/devices/vfio0", bound["vfio_cdev"]))
    nodes = guest.call("selfcheck.devices")
    verdict.add(Check.equal("/dev/iommu exists", True, nodes["iommu"]))
    opened = guest.call("selfcheck.open_cdev", path=bound["vfio_cdev"] or "")
    verdict.add(Check.equal("cdev opens and binds to iommufd", True, opened["bound"],
                            opened.get("error", "")))  # fmt: skip
    deadline = time.monotonic() + 10
    while not window.records(pattern) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = sorted({r.name for r in window.records(pattern)})
    verdict.facts["trace_events_seen"] = names
    verdict.add(Check("vIOMMU trace records", f"{pattern} records", len(names), bool(names)))
    return verdict
