"""What the tier-2 fuzzer reads of QEMU's SMMUv3 from the host, over QMP (never written).

- the ID registers once, before the first example: the model's facts (``SmmuFacts``);
- the device's STE after every attach or detach the kernel accepted: its Config (and, for
  a nested STE, the S1ContextPtr the vSTE gave), which the model predicts from what the
  device is attached to (``SmmuModel.installed``);
- SMMU_GERROR ^ SMMU_GERRORN after every example: global errors not acknowledged.
"""

from __future__ import annotations

from typing import Any

from harness.fuzz.smmuv3_model import SmmuFacts
from harness.qemu.viommu_regs import (
    MmioWindow,
    Monitor,
    Reader,
    ViommuRegsError,
    find_viommus,
    read_smmu_id_regs,
    read_ste_now,
    smmu_active_errors,
)
from harness.smmuv3.registers import decode_id_regs
from harness.smmuv3.ste import SteConfig
from harness.smmuv3.vste import STE0_CFG, STE0_S1CTXPTR, STE0_V

#: STE.Config values by the names the model uses
CONFIG_NAMES = {
    int(SteConfig.ABORT): "abort",
    int(SteConfig.BYPASS): "bypass",
    int(SteConfig.S1_TRANS): "s1",
    int(SteConfig.S2_TRANS): "s2",
    int(SteConfig.NESTED): "nested",
}
#: steps after which the device's STE is read (when the kernel accepted them)
STE_OPS = ("attach", "detach")


class SmmuObserver:
    """QEMU's SMMUv3 of one machine, seen from the host, for the stream ``sid``."""

    def __init__(self, mon: Monitor, sid: int) -> None:
        self.reader = Reader(mon)
        windows = [w for w in find_viommus(mon) if w.kind == "smmuv3"]
        if not windows:
            raise ViommuRegsError("no SMMUv3 register window in the machine's memory map")
        self.window: MmioWindow = windows[0]
        self.sid = sid
        self.ste_reads = 0

    def facts(self) -> SmmuFacts:
        raw = read_smmu_id_regs(self.reader, self.window)
        return SmmuFacts(decode_id_regs(raw), raw)

    def after_step(self, wire: dict[str, Any], observed: dict[str, Any]) -> None:
        """Add the device's STE to an accepted attach or detach (``ste_config``, and
        ``ste_s1ctxptr`` for a nested STE)."""
        if wire["op"] not in STE_OPS or observed.get("outcome") != "ok":
            return
        word0 = int.from_bytes(read_ste_now(self.reader, self.window, self.sid)[:8], "little")
        self.ste_reads += 1
        config = (word0 & STE0_CFG) >> 1
        observed["ste_config"] = (
            CONFIG_NAMES.get(config, f"reserved {config:#05b}") if word0 & STE0_V else "invalid"
        )
        if observed["ste_config"] == "nested":
            observed["ste_s1ctxptr"] = word0 & STE0_S1CTXPTR

    def after_example(self) -> dict[str, Any]:
        return {"gerror_active": smmu_active_errors(self.reader, self.window)}
