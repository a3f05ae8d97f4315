"""Tier 2's rules: the nesting uAPI over the edu device's VFIO cdev on QEMU's SMMUv3.

Each example binds the device first (``@initialize``); the rules then attach and detach
it, unbind and rebind it, allocate paging, nest-parent and nested HWPTs (valid and
malformed vSTEs), vIOMMUs, vDEVICEs and vEVENTQs, send invalidation arrays of SMMUv3
commands (valid, refused and malformed layouts), read hw_info, and share tier 1's IOAS,
queue and destroy rules (``CommonRules``).  ``SmmuModel`` predicts every answer.

Beyond tier 1's oracles, ``check_end`` judges the SMMU itself, read over QMP after every
example: no global error active (SMMU_GERROR ^ SMMU_GERRORN) and no "CMDQ error" in the
kernel log.  The vSMMU exists to keep a guest's commands from wedging the shared command
queue; a command it let through that QEMU's SMMU finds illegal shows up here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from harness.fuzz.model import PAGES, VEVENTQ_MAX_DEPTH, Model
from harness.fuzz.rules import (
    CommonRules,
    devices,
    hwpts,
    ioases,
    queues,
    vdevices,
    viommus,
)
from harness.fuzz.smmuv3_model import (
    COMMANDS,
    HWPT_FLAGS,
    LAYOUTS,
    STE_KINDS,
    SmmuFacts,
    SmmuModel,
    command_words,
)

#: kernel log lines that say the SMMU's command queue refused a command
CMDQ_ERROR_MARKS = ("CMDQ error", "CMD_SYNC timeout")
#: calls with an ID that names nothing (None); "dev" is replaced by a device handle
BOGUS_ARGS: dict[str, dict[str, Any]] = {
    "map": {"ioas": None, "page": 0, "npages": 1},
    "unmap_all": {"ioas": None},
    "attach": {"pt": None},
    "destroy": {"target": None},
    "viommu_alloc": {"dev": "dev", "hwpt": None},
    "veventq_alloc": {"viommu": None, "depth": 1},
    "invalidate": {"target": None, "commands": [[0x10, 0]]},
    "hw_info": {"dev": None, "info_type": "arm"},
    "hwpt_alloc": {"dev": "dev", "pt": None},
}


class SmmuMachine(CommonRules):
    """Tier 2: one vfio-pci device behind QEMU's SMMUv3 (arm64)."""

    facts: ClassVar[SmmuFacts]

    @classmethod
    def new_model(cls) -> Model:
        return SmmuModel(cls.facts)

    @property
    def smmu(self) -> SmmuModel:
        return cast(SmmuModel, self.model)

    def check_end(self, end: dict[str, Any]) -> None:
        super().check_end(end)
        smmu = end.get("smmu") or {}
        if smmu.get("gerror_active"):
            self._fail(f"SMMU global error active after the example: {smmu}")
        dmesg = str(end.get("dmesg", ""))
        for mark in CMDQ_ERROR_MARKS:
            if mark in dmesg:
                line = next(line for line in dmesg.splitlines() if mark in line)
                self._fail(f"the SMMU's command queue refused a command: {line.strip()}")

    def _bound(self) -> bool:
        return self.smmu.device() is not None

    # --- the device -------------------------------------------------------------------

    @initialize(target=devices)
    def bind(self) -> Any:
        return self._created("bind", self.model.predict("bind"))

    @precondition(lambda self: not self._bound())
    @rule(target=devices)
    def rebind(self) -> Any:
        return self._created("rebind", self.model.predict("bind"))

    @precondition(lambda self: self._bound() and self._has("IOAS", "HWPT_PAGING", "HWPT_NESTED"))
    @rule(data=st.data(), other=st.integers(0, 9))
    def attach(self, data: st.DataObject, other: int) -> None:
        """Attach (or replace) to an IOAS or HWPT; three times in ten detach instead, one
        in ten unbind (close the device fd: ``rebind`` binds it again)."""
        if other == 6:
            self._do("unbind", self.model.predict("unbind"))
        elif other >= 7:  # after one detach in twelve, a DMA through the blocked domain
            self._do("detach", self.model.predict("detach"))
            if other == 7 and not data.draw(st.integers(0, 3), "dma"):
                self._do("dma", self.model.predict("dma", src=0, dst=1, marker=0xD3A0))
        else:
            pt = self._pick(data, "pt", "IOAS", "HWPT_PAGING", "HWPT_NESTED")
            self._do("attach", self.model.predict("attach", pt=pt))

    @precondition(lambda self: self.smmu.dma_translates())
    @rule(data=st.data(), src=st.integers(0, PAGES - 1), dst=st.integers(0, PAGES - 1))
    def dma(self, data: st.DataObject, src: int, dst: int) -> None:
        """edu copies a marker between two IOVA pages through whatever is attached (mostly
        pages the attachment maps, mapping two first half the time when it maps none, so
        copies land as well as fault)."""
        dev = self.smmu.device()
        ioas = self.smmu.translating_ioas(dev.attached if dev is not None else None)
        mapped = sorted(self.smmu.pages.get(ioas.handle, {})) if ioas is not None else []
        if ioas is not None and not mapped and data.draw(st.booleans(), "map first"):
            npages = min(2, PAGES - src)
            self._do(
                "dma:map", self.model.predict("map", ioas=ioas.handle, page=src, npages=npages)
            )
            mapped = sorted(self.smmu.pages.get(ioas.handle, {}))
        if mapped and data.draw(st.integers(0, 3), "mapped") < 3:
            src = data.draw(st.sampled_from(mapped), "src page")
            dst = data.draw(st.sampled_from(mapped), "dst page")
        marker = 0xD3A0_0000_0000_0000 | len(self.trace) << 16 | src << 8 | dst
        self._do("dma", self.model.predict("dma", src=src, dst=dst, marker=marker))

    @precondition(lambda self: self._has("DEVICE"))
    @rule(data=st.data(), info_type=st.sampled_from(["arm", "arm", "default", "vtd", "badflags"]))
    def hw_info(self, data: st.DataObject, info_type: str) -> None:
        dev = self._pick(data, "dev", "DEVICE")
        self._do("hw_info", self.model.predict("hw_info", dev=dev, info_type=info_type))

    # --- HWPTs --------------------------------------------------------------------

    @precondition(lambda self: self._has("DEVICE") and self._has("IOAS"))
    @rule(
        target=hwpts,
        data=st.data(),
        flags=st.sampled_from(["none", "nest_parent", "nest_parent", "pasid", "dirty", "bad"]),
        with_fault=st.integers(0, 3),
        ste=st.sampled_from(["none"] * 6 + ["abort"]),
    )
    def hwpt_paging(self, data: st.DataObject, flags: str, with_fault: int, ste: str) -> Any:
        dev = self._pick(data, "dev", "DEVICE")
        ioas = self._pick(data, "ioas", "IOAS")
        fault = self._pick(data, "fault", "FAULT") if with_fault == 3 and self._has("FAULT") else -1
        pred = self.model.predict("hwpt_alloc", dev=dev, pt=ioas, flags=flags, ste=ste, fault=fault)
        return self._created("hwpt_paging", pred)

    @precondition(lambda self: self._has("DEVICE") and self._has("VIOMMU"))
    @rule(
        target=hwpts,
        data=st.data(),
        ste=st.sampled_from(["s1", "s1", "abort", "bypass", *STE_KINDS]),
        flags=st.sampled_from(["none"] * 5 + ["pasid"]),
        with_fault=st.integers(0, 3),
        over_paging=st.integers(0, 7),
    )
    def hwpt_nested(
        self, data: st.DataObject, ste: str, flags: str, with_fault: int, over_paging: int
    ) -> Any:
        """A nested HWPT over a vIOMMU (one time in eight over a paging HWPT: EOPNOTSUPP)."""
        dev = self._pick(data, "dev", "DEVICE")
        kinds = ("HWPT_PAGING",) if over_paging == 7 and self._has("HWPT_PAGING") else ("VIOMMU",)
        parent = self._pick(data, "nest parent", *kinds)
        fault = self._pick(data, "fault", "FAULT") if with_fault == 3 and self._has("FAULT") else -1
        pred = self.model.predict(
            "hwpt_alloc", dev=dev, pt=parent, flags=flags, ste=ste, fault=fault
        )
        return self._created("hwpt_nested", pred)

    # --- a nesting stack in one rule (deep states are otherwise rare) -----------------

    @precondition(lambda self: self._bound() and self._has("IOAS"))
    @rule(
        data=st.data(),
        choices=st.lists(st.integers(0, 3), min_size=7, max_size=7),
        virt_id=st.integers(0, 3),
        ste=st.sampled_from(["s1", "s1", "abort", "bypass", "invalid"]),
        command=st.sampled_from(COMMANDS),
    )
    def nesting_stack(
        self, data: st.DataObject, choices: list[int], virt_id: int, ste: str, command: str
    ) -> None:
        """Nest parent, vIOMMU, vDEVICE, vEVENTQ, nested HWPT, attach, invalidate and
        read: each taken with probability 3/4 (0 turns it off: where the shrinker goes)."""
        parts = [c != 0 for c in choices]
        m = self.smmu
        dev = self._pick(data, "dev", "DEVICE", stale=False)
        made = self._made
        viommu = self._stack_viommu(data, parts, dev, {"flags": "nest_parent"})
        if viommu is None:
            return
        if parts[2]:
            made(
                "stack:vdevice", m.predict("vdevice_alloc", viommu=viommu, dev=dev, virt_id=virt_id)
            )
        if parts[3]:
            made("stack:veventq", m.predict("veventq_alloc", viommu=viommu, depth=4))
        if parts[4]:
            nested = made("stack:nested", m.predict("hwpt_alloc", dev=dev, pt=viommu, ste=ste))
            if nested is not None and parts[5]:
                self._do("stack:attach", m.predict("attach", pt=nested))
        if parts[6]:
            vsids = sorted(m.objs[viommu].vdevs) or [virt_id]
            words = command_words(command, data.draw(st.sampled_from(vsids), "vsid"))
            self._do("stack:invalidate", m.predict("invalidate", target=viommu, commands=[words]))
            for queue in m.veventqs.get(viommu, {}).values():
                if queue.fd_open:
                    self._do("stack:read", m.predict("read_vevents", queue=queue.handle))

    # --- vIOMMU -------------------------------------------------------------------

    @precondition(lambda self: self._has("DEVICE") and self._has("HWPT_PAGING"))
    @rule(
        target=viommus,
        data=st.data(),
        viommu_type=st.sampled_from(["arm"] * 6 + ["default", "tegra"]),
    )
    def viommu_alloc(self, data: st.DataObject, viommu_type: str) -> Any:
        dev = self._pick(data, "dev", "DEVICE")
        hwpt = self._pick(data, "nest parent", "HWPT_PAGING")
        pred = self.model.predict("viommu_alloc", dev=dev, hwpt=hwpt, viommu_type=viommu_type)
        return self._created("viommu_alloc", pred)

    @precondition(lambda self: self._has("VIOMMU"))
    @rule(
        target=queues,
        data=st.data(),
        depth=st.sampled_from([1, 2, 4, 0]),
        queue_type=st.sampled_from(["arm", "arm", "tegra", "default"]),
    )
    def veventq_alloc(self, data: st.DataObject, depth: int, queue_type: str) -> Any:
        viommu = self._pick(data, "viommu", "VIOMMU")
        pred = self.model.predict(
            "veventq_alloc", viommu=viommu, depth=depth, queue_type=queue_type
        )
        return self._created("veventq_alloc", pred)

    # --- invalidation -------------------------------------------------------------

    @precondition(lambda self: self._has("VIOMMU", "HWPT_NESTED"))
    @rule(
        data=st.data(),
        kinds=st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=3),
        layout=st.sampled_from(["exact"] * 8 + list(LAYOUTS)),
        asid=st.sampled_from([1, 0xFF, 0xFFFF]),
    )
    def invalidate(self, data: st.DataObject, kinds: list[str], layout: str, asid: int) -> None:
        target = self._pick(data, "target", "VIOMMU", "HWPT_NESTED")
        obj = self.model.objs[target]
        vsids = [*sorted(obj.vdevs), 0, 7]
        commands = [
            command_words(kind, data.draw(st.sampled_from(vsids), "vsid"), asid) for kind in kinds
        ]
        pred = self.model.predict("invalidate", target=target, commands=commands, layout=layout)
        self._do("invalidate", pred)

    # --- IDs of any type, live or stale, and IDs that name nothing ---------------------

    @rule(
        data=st.data(),
        op=st.sampled_from(["attach", "hwpt_alloc", "vdevice_alloc", "veventq_alloc",
                            "viommu_alloc", "invalidate", "hw_info", "bogus"]),
        obj=st.one_of(ioases, hwpts, viommus, vdevices, queues, devices),
        other=st.one_of(devices, hwpts, ioases),
    )  # fmt: skip
    def odd_call(self, data: st.DataObject, op: str, obj: int, other: int) -> None:
        """One call with objects of any type, live or stale (``obj`` where the call wants
        its main object, ``other`` where it wants a device), or with an ID naming nothing."""
        draw = data.draw
        args: dict[str, Any]
        if op == "bogus":
            op = draw(st.sampled_from(sorted(BOGUS_ARGS)), "bogus op")
            args = {k: other if v == "dev" else v for k, v in BOGUS_ARGS[op].items()}
            rule_name = f"bogus:{op}"
        else:
            rule_name = f"odd:{op}"
            builders: dict[str, Callable[[], dict[str, Any]]] = {
                "attach": lambda: {"pt": obj},
                "hwpt_alloc": lambda: {
                    "dev": other,
                    "pt": obj,
                    "ste": draw(st.sampled_from(STE_KINDS), "ste"),
                    "flags": draw(st.sampled_from(sorted(HWPT_FLAGS)), "flags"),
                    "fault": draw(st.one_of(st.just(-1), queues, hwpts), "fault"),
                },
                "vdevice_alloc": lambda: {
                    "viommu": obj,
                    "dev": other,
                    "virt_id": draw(st.integers(0, 3), "virt_id"),
                },
                "veventq_alloc": lambda: {
                    "viommu": obj,
                    "depth": draw(st.sampled_from([1, 0, VEVENTQ_MAX_DEPTH + 1]), "depth"),
                },
                "viommu_alloc": lambda: {"dev": other, "hwpt": obj},
                "invalidate": lambda: {
                    "target": obj,
                    "commands": [command_words(draw(st.sampled_from(COMMANDS), "command"), 0)],
                    "layout": draw(st.sampled_from(LAYOUTS), "layout"),
                },
                "hw_info": lambda: {"dev": obj, "info_type": "arm"},
            }
            args = builders[op]()
        if op == "attach" and not self._bound():
            return
        self._created(rule_name, self.model.predict(op, **args))
