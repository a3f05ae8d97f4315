"""Tier 2's model: one iommufd context over a real vfio-pci device behind QEMU's SMMUv3.

What differs from the mock (``harness.fuzz.model``), each op following its handler in
Linux 7.3: the device is bound, attached and detached through its VFIO cdev
(vfio_df_ioctl_attach_pt: attach, or replace when attached; detach of a detached device
is a no-op); HWPT_ALLOC goes to arm_smmu_domain_alloc_paging_flags (flags NEST_PARENT or
PASID, no user data, no dirty tracking on QEMU's SMMU) and, for a nested HWPT, to
arm_vsmmu_alloc_domain_nested (the vSTE's verdict is ``harness.smmuv3.vste``); the
vIOMMU is ARM_SMMUV3 only; vEVENTQs are one per type, of any non-default type;
invalidation goes to arm_vsmmu_cache_invalidate (each command's verdict and entry_num
from ``harness.smmuv3.vinvalidate``) and a nested HWPT has none (EOPNOTSUPP);
GET_HW_INFO returns QEMU's ID registers, which the host reads over QMP (``IdRegs``), so
the prediction does not come from the guest kernel it judges.  Unbinding the device (its
fd closed) destroys its vDEVICE, leaving a tombstone, and its attachment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.driver.errors import errno_name
from harness.fuzz.model import (
    IOCTL,
    OK,
    VEVENTQ_MAX_DEPTH,
    Commit,
    Model,
    ModelError,
    Obj,
    Prediction,
)
from harness.smmuv3.cmdq import make_command
from harness.smmuv3.registers import IdRegs
from harness.smmuv3.vinvalidate import VsmmuContext, check_vsmmu_invalidation_array
from harness.smmuv3.vste import STE0_S1CTXPTR, VsteVerdict, build_nested_ste, validate_nested_ste

#: IOMMU_HWPT_ALLOC flags as the rules name them
HWPT_FLAGS = {"none": 0, "nest_parent": 1 << 0, "dirty": 1 << 1, "pasid": 1 << 3, "bad": 1 << 7}
FAULT_ID_VALID = 1 << 2
#: nested-HWPT user data: a vSTE (16 bytes) or a malformed one
STE_KINDS = ("abort", "bypass", "s1", "invalid", "badbits", "badcfg", "badeats", "short",
             "long", "badtype", "none")  # fmt: skip
#: vIOMMU / vEVENTQ / hw_info types by name, as sent
VIOMMU_TYPES = {"arm": 1, "default": 0, "tegra": 2}
VEVENTQ_TYPES = {"arm": 1, "tegra": 2, "default": 0}
HW_INFO_TYPES = {"default": 0, "arm": 2, "vtd": 1, "badflags": -1}
HW_INFO_ARM_LEN = 40  # sizeof(struct iommu_hw_info_arm_smmuv3)
#: invalidation commands as the rules name them (``vsid`` and ``asid`` filled in)
COMMANDS = ("nh_all", "nh_asid", "nsnh_all", "nh_va", "nh_va_range", "nh_va_reserved",
            "cfgi_cd", "cfgi_cd_all", "cfgi_ste", "atc_inv", "res0", "cmd_sync")  # fmt: skip
#: invalidation array layouts: entry_len 16, 8 (zero-extended), 24 with a zero or a
#: non-zero tail, no entries, entry_len 0, an unknown data type
LAYOUTS = ("exact", "short", "long0", "longx", "empty", "nolen", "badtype")
STE_S1_CD_TABLE = 0x4000_0000


def ste_words(kind: str) -> list[int]:
    """Words 0-1 of the vSTE a rule asks for (the guest sends them as they are)."""
    if kind in ("short", "long", "badtype"):  # a valid vSTE sent with the wrong length or type
        kind = "s1"
    if kind in ("abort", "bypass", "s1"):
        raw = build_nested_ste(kind, cd_table=STE_S1_CD_TABLE if kind == "s1" else 0)
        return [int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")]
    return {
        "invalid": [0, 0],
        "badbits": [1 | 5 << 1 | 1 << 55, 0],  # bit 55 is outside NESTING_ALLOWED
        "badcfg": [1 | 6 << 1, 0],  # Config 0b110 (S2 only) is not allowed
        "badeats": [1 | 5 << 1, 2 << 28],  # Config S1, EATS 0b10 (split-stage ATS)
    }.get(kind, [0, 0])


def command_words(kind: str, vsid: int, asid: int = 1) -> list[int]:
    """Words 0-1 of one invalidation command a rule asks for."""
    va = 0x100_0000
    made = {
        "nh_all": lambda: make_command("TLBI_NH_ALL"),
        "nh_asid": lambda: make_command("TLBI_NH_ASID", asid=asid),
        "nsnh_all": lambda: make_command("TLBI_NSNH_ALL"),
        "nh_va": lambda: make_command("TLBI_NH_VA", asid=asid, address=va, leaf=1),
        "nh_va_range": lambda: make_command(
            "TLBI_NH_VA", asid=asid, address=va, num=1, tg=1, ttl=3
        ),
        "nh_va_reserved": lambda: make_command("TLBI_NH_VA", asid=asid, address=va, tg=1),
        "cfgi_cd": lambda: make_command("CFGI_CD", sid=vsid, ssid=0, leaf=1),
        "cfgi_cd_all": lambda: make_command("CFGI_CD_ALL", sid=vsid),
        "cfgi_ste": lambda: make_command("CFGI_STE", sid=vsid),
        "atc_inv": lambda: make_command("ATC_INV", sid=vsid, size=0),
        "cmd_sync": lambda: make_command("CMD_SYNC"),
    }
    if kind == "res0":  # TLBI_NH_ALL with a RES0 bit (word 0 bit 8) set
        return [int(make_command("TLBI_NH_ALL").words()[0]) | 1 << 8, 0]
    w0, w1 = made[kind]().words()
    return [int(w0), int(w1)]


@dataclass
class SmmuFacts:
    """What the model takes as given about the machine: QEMU's SMMU ID registers."""

    regs: IdRegs
    raw: dict[str, int] = field(default_factory=dict)
    """IDR0..IDR5, IIDR, AIDR as read over QMP (hw_info must return these)."""


class SmmuModel(Model):
    """One iommufd context with the edu device's VFIO cdev, on QEMU's SMMUv3."""

    ioctls: ClassVar[dict[str, str]] = {
        **IOCTL,
        "bind": "VFIO_DEVICE_BIND_IOMMUFD",
        "unbind": "close(vfio device fd)",
        "attach": "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
        "detach": "VFIO_DEVICE_DETACH_IOMMUFD_PT",
        "hw_info": "IOMMU_GET_HW_INFO",
        "dma": "edu DMA through the IOMMU",
    }

    def __init__(self, facts: SmmuFacts) -> None:
        super().__init__()
        self.facts = facts
        #: nested HWPT handle -> the kernel's verdict on its vSTE (what attach installs)
        self.vste: dict[int, VsteVerdict] = {}
        #: vIOMMU handle -> its vEVENTQs by type
        self.veventqs: dict[int, dict[int, Obj]] = {}
        #: IOAS handle -> {IOVA page: the buffer page it maps}
        self.pages: dict[int, dict[int, int]] = {}

    def predict(self, op: str, **args: Any) -> Prediction:
        pred = super().predict(op, **args)
        if op in ("map", "copy", "unmap", "unmap_all") and pred.commit is not None:
            pred.commit = self._tracking_pages(op, args, pred.commit)
        if op == "dma" and pred.outcome == OK:  # coverage tells the two effects apart
            pred.ioctl += ": lands" if pred.fields["landed"] is not None else ": faults"
        return pred

    def _tracking_pages(self, op: str, args: dict[str, Any], commit: Commit) -> Commit:
        """``commit``, then the IOAS's IOVA page -> buffer page table brought up to date
        (a map maps buffer page N at IOVA page N; a copy maps what the source maps)."""
        target = self.typed(self.kid(args["dst" if op == "copy" else "ioas"]), "IOAS")
        source: dict[int, int] = {}
        if op == "copy" and (src := self.typed(self.kid(args["src"]), "IOAS")) is not None:
            source = dict(self.pages.get(src.handle, {}))

        def tracked(obs: dict[str, Any]) -> None:
            commit(obs)
            if target is None:
                return
            pages = self.pages.setdefault(target.handle, {})
            if op == "map":
                pages.update((p, p) for p in range(args["page"], args["page"] + args["npages"]))
            elif op == "copy":
                for i in range(args["npages"]):
                    pages[args["dst_page"] + i] = source[args["src_page"] + i]
            covered = {p for a in target.areas for p in range(a[0], a[0] + a[1])}
            for page in [p for p in pages if p not in covered]:
                del pages[page]

        return tracked

    def translating_ioas(self, hwpt: Obj | None) -> Obj | None:
        """The IOAS whose mappings the device's DMA goes through (None: every access
        faults): a paging HWPT's, a bypass vSTE's nest parent's.  A translating vSTE's
        CD table is not modelled (the rules do no DMA through one)."""
        if hwpt is None:
            return None
        if hwpt.kind == "HWPT_PAGING":
            return hwpt.ioas
        installs = self.vste[hwpt.handle].installs
        if installs == "nested":
            raise ModelError("no DMA prediction through a translating vSTE")
        return hwpt.parent.ioas if installs == "bypass" and hwpt.parent else None

    def dma_translates(self) -> bool:
        """Whether the device is attached and a DMA has a prediction (not through a
        translating vSTE)."""
        dev = self.device()
        hwpt = dev.attached if dev is not None else None
        return hwpt is not None and (
            hwpt.kind != "HWPT_NESTED" or self.vste[hwpt.handle].installs != "nested"
        )

    def _op_dma(self, src: int, dst: int, marker: int) -> Prediction:
        """edu copies IOVA page ``src`` to ``dst`` (guest half: ``SmmuSession.dma``): the
        marker lands in the buffer page ``dst`` maps iff both pages translate."""
        wire = {"src": src, "dst": dst, "marker": marker}
        dev = self.device()
        if dev is None:
            return self._p("dma", wire, "EBADF")
        ioas = self.translating_ioas(dev.attached)
        pages = self.pages.get(ioas.handle, {}) if ioas is not None else {}
        landed = pages[dst] if src in pages and dst in pages else None
        return self._p("dma", wire, OK, None, landed=landed)

    def device(self) -> Obj | None:
        """The bound device, if it is bound now."""
        live = self.live("DEVICE")
        return live[0] if live else None

    def installed(self, hwpt: Obj | None) -> dict[str, Any]:
        """The STE fields attaching to ``hwpt`` (None: detached) installs, as the host reads
        them: a blocked or abort domain an abort STE; a nest parent, or a bypass vSTE over
        it, stage 2 only; any other paging domain stage 1 (QEMU's SMMU has both stages);
        a translating vSTE a nested STE with the vSTE's S1ContextPtr."""
        if hwpt is None:
            return {"ste_config": "abort"}
        if hwpt.kind == "HWPT_PAGING":
            return {"ste_config": "s2" if hwpt.nest_parent else "s1"}
        installs = self.vste[hwpt.handle].installs
        if installs == "nested":
            return {"ste_config": "nested",
                    "ste_s1ctxptr": self.vste[hwpt.handle].ste[0] & STE0_S1CTXPTR}  # fmt: skip
        return {"ste_config": "s2" if installs == "bypass" else "abort"}

    def busy(self, obj: Obj) -> bool:
        if obj.kind == "VIOMMU":
            return (
                any(n.viommu is obj for n in self.live("HWPT_NESTED"))
                or bool(obj.vdevs)
                or bool(self.veventqs.get(obj.handle))
            )
        return super().busy(obj)

    def _destroy(self, obj: Obj) -> None:
        if obj.kind == "VEVENTQ" and obj.viommu is not None:
            queues = self.veventqs.get(obj.viommu.handle, {})
            for queue_type in [t for t, q in queues.items() if q is obj]:
                del queues[queue_type]
        super()._destroy(obj)

    # --- the device -------------------------------------------------------------------

    def _op_bind(self) -> Prediction:
        if self.device() is not None:
            return self._p("bind", {}, "EINVAL")  # vfio_df_ioctl_bind_iommufd: already bound

        def commit(obs: dict[str, Any]) -> None:
            dev = self._new("DEVICE", obs["id"])
            dev.idev = dev.kid

        return self._p("bind", {}, OK, commit)

    def _op_unbind(self) -> Prediction:
        dev = self.device()
        if dev is None:
            return self._p("unbind", {}, "EBADF")
        gone = dev

        def commit(obs: dict[str, Any]) -> None:
            self._destroy(gone)  # detach, its vDEVICE destroyed with a tombstone, unbind

        return self._p("unbind", {}, OK, commit)

    def _op_attach(self, pt: int | None) -> Prediction:
        wire = {"pt": self.kid(pt)}
        dev = self.device()
        if dev is None:
            return self._p("attach", wire, "EBADF")
        found = self.lookup(wire["pt"])
        if found is None:
            return self._p("attach", wire, "ENOENT")
        kind, obj = found
        if kind not in ("IOAS", "HWPT_PAGING", "HWPT_NESTED"):
            return self._p("attach", wire, "EINVAL")
        if kind == "HWPT_NESTED" and self.vste[obj.handle].needs_vdevice:
            viommu = obj.viommu
            # arm_smmu_attach_prepare_vmaster: a translating vSTE needs a vDEVICE
            if dev.vdev is None or dev.vdev.viommu is not viommu:
                return self._p("attach", wire, "ENOENT")
        expect: dict[str, Any] = {}
        if kind != "IOAS":
            expect = {"hwpt": obj.kid, **self.installed(obj)}
        elif (auto := self._auto_domain(obj)) is not None:
            expect = {"hwpt": auto.kid, **self.installed(auto)}
        else:
            expect = {"ste_config": "s1"}  # a new auto domain: flags 0, stage 1

        def commit(obs: dict[str, Any]) -> None:
            self._move(dev, self._target_hwpt(kind, obj, obs["hwpt"]))

        return self._p("attach", wire, OK, commit, **expect)

    def _op_detach(self) -> Prediction:
        dev = self.device()
        if dev is None:
            return self._p("detach", {}, "EBADF")
        attached = dev

        def commit(obs: dict[str, Any]) -> None:
            old = attached.attached
            attached.attached = None
            if old is not None:
                self._leave(attached, old)

        return self._p("detach", {}, OK, commit, **self.installed(None))

    def _op_hw_info(self, dev: int | None, info_type: str) -> Prediction:  # type: ignore[override,unused-ignore]
        wire = {"dev": self.kid(dev, "DEVICE"), "type": HW_INFO_TYPES[info_type]}
        if info_type == "badflags":
            return self._p("hw_info", wire, "EOPNOTSUPP")
        if self.typed(wire["dev"], "DEVICE") is None:
            return self._p("hw_info", wire, "ENOENT")
        if info_type not in ("default", "arm"):  # arm_smmu_hw_info: no impl_ops here
            return self._p("hw_info", wire, "EOPNOTSUPP")
        raw = self.facts.raw
        return self._p(
            "hw_info", wire, OK, None,
            data_type=2, data_len=HW_INFO_ARM_LEN,
            idr=[raw[f"IDR{i}"] for i in range(6)], iidr=raw["IIDR"], aidr=raw["AIDR"],
        )  # fmt: skip

    # --- HWPTs ------------------------------------------------------------------------

    def _op_hwpt_alloc(  # type: ignore[override]
        self, dev: int | None, pt: int | None, flags: str = "none", ste: str = "none",
        fault: int | None = -1,
    ) -> Prediction:  # fmt: skip
        """IOMMU_HWPT_ALLOC: ``flags`` a HWPT_FLAGS name, ``ste`` a STE_KINDS name (user
        data), ``fault`` -1 for none, else a fault queue handle (None: a bogus ID)."""
        has_fault = fault != -1
        bits = HWPT_FLAGS[flags] | (FAULT_ID_VALID if has_fault else 0)
        wire: dict[str, Any] = {
            "dev": self.kid(dev, "DEVICE"),
            "pt": self.kid(pt),
            "flags": bits,
            "ste": ste,
            "words": ste_words(ste),
            "fault": -1 if not has_fault else self.kid(fault),
        }

        def p(outcome: str, commit: Commit | None = None) -> Prediction:
            return self._p("hwpt_alloc", wire, outcome, commit)

        has_data = ste != "none"
        if self.typed(wire["dev"], "DEVICE") is None:
            return p("ENOENT")
        found = self.lookup(wire["pt"])
        if found is None:
            return p("EINVAL")
        kind, obj = found
        verdict: VsteVerdict | None = None
        if kind == "IOAS":  # iommufd_hwpt_paging_alloc, then the SMMU driver
            if bits & ~(HWPT_FLAGS["nest_parent"] | HWPT_FLAGS["dirty"] | FAULT_ID_VALID
                        | HWPT_FLAGS["pasid"]):  # fmt: skip
                return p("EOPNOTSUPP")
            if bits & HWPT_FLAGS["dirty"]:  # QEMU's SMMU: no HTTU, no dirty tracking
                return p("EOPNOTSUPP")
            if bits & FAULT_ID_VALID and bits & HWPT_FLAGS["nest_parent"]:
                return p("EOPNOTSUPP")
            if has_data:
                return p("EOPNOTSUPP")
            if bits & HWPT_FLAGS["nest_parent"] and bits & HWPT_FLAGS["pasid"]:
                return p("EOPNOTSUPP")  # arm_smmu_domain_alloc_paging_flags: no such case
            new_kind = "HWPT_PAGING"
            attrs: dict[str, Any] = {"ioas": obj, "nest_parent": flags == "nest_parent"}
        elif kind == "HWPT_PAGING":  # iommufd_hwpt_nested_alloc: the SMMU has no
            return p("EOPNOTSUPP")  # domain_alloc_nested (nesting goes through a vIOMMU)
        elif kind == "VIOMMU":
            if bits & ~(FAULT_ID_VALID | HWPT_FLAGS["pasid"]) or not has_data:
                return p("EOPNOTSUPP")
            if bits & HWPT_FLAGS["pasid"]:  # arm_vsmmu_alloc_domain_nested: flags
                return p("EOPNOTSUPP")
            if ste in ("badtype", "short", "long"):  # iommu_copy_struct_from_user
                return p("EINVAL")
            verdict = validate_nested_ste(wire["words"])
            if not verdict.ok:
                return p(errno_name(verdict.errno))
            new_kind, attrs = "HWPT_NESTED", {"parent": obj.hwpt, "viommu": obj}
        else:
            return p("EINVAL")
        outcome, fault_obj = self._hwpt_fault(wire)
        if outcome != OK:
            return p(outcome)

        def commit(obs: dict[str, Any]) -> None:
            made = self._new(new_kind, obs["id"], fault=fault_obj, **attrs)
            if verdict is not None:
                self.vste[made.handle] = verdict

        return p(OK, commit)

    # --- vIOMMU -----------------------------------------------------------------------

    def _op_viommu_alloc(
        self, dev: int | None, hwpt: int | None, viommu_type: str = "arm"
    ) -> Prediction:
        wire = {
            "dev": self.kid(dev, "DEVICE"),
            "hwpt": self.kid(hwpt),
            "type": VIOMMU_TYPES[viommu_type],
        }
        if viommu_type == "default":
            return self._p("viommu_alloc", wire, "EOPNOTSUPP")
        if self.typed(wire["dev"], "DEVICE") is None:
            return self._p("viommu_alloc", wire, "ENOENT")
        if viommu_type != "arm":  # arm_smmu_get_viommu_size: 0 without impl_ops
            return self._p("viommu_alloc", wire, "EOPNOTSUPP")
        parent = self.typed(wire["hwpt"], "HWPT_PAGING")
        if parent is None:
            return self._p("viommu_alloc", wire, "ENOENT")
        if not parent.nest_parent:
            return self._p("viommu_alloc", wire, "EINVAL")

        def commit(obs: dict[str, Any]) -> None:
            made = self._new("VIOMMU", obs["id"], hwpt=parent)
            self.veventqs[made.handle] = {}

        return self._p("viommu_alloc", wire, OK, commit)

    def _op_veventq_alloc(
        self, viommu: int | None, depth: int, queue_type: str = "arm"
    ) -> Prediction:
        wire = {"viommu": self.kid(viommu), "depth": depth, "type": VEVENTQ_TYPES[queue_type]}
        if queue_type == "default":
            return self._p("veventq_alloc", wire, "EOPNOTSUPP")
        if not depth or depth > VEVENTQ_MAX_DEPTH:
            return self._p("veventq_alloc", wire, "EINVAL")
        target = self.typed(wire["viommu"], "VIOMMU")
        if target is None:
            return self._p("veventq_alloc", wire, "ENOENT")
        queues = self.veventqs.setdefault(target.handle, {})
        if wire["type"] in queues:
            return self._p("veventq_alloc", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            queues[wire["type"]] = self._new(
                "VEVENTQ", obs["id"], viommu=target, depth=depth, fd_open=True
            )

        return self._p("veventq_alloc", wire, OK, commit)

    # --- invalidation -----------------------------------------------------------------

    def _op_invalidate(  # type: ignore[override]
        self, target: int | None, commands: list[list[int]], layout: str = "exact"
    ) -> Prediction:
        """IOMMU_HWPT_INVALIDATE with ARM_SMMUV3 commands (words 0-1 each) in ``layout``."""
        wire: dict[str, Any] = {"target": self.kid(target), "commands": commands, "layout": layout}

        def p(outcome: str, done: int) -> Prediction:
            return self._p("invalidate", wire, outcome, None, done=done)

        if layout == "nolen":
            return p("EINVAL", 0)
        found = self.lookup(wire["target"])
        if found is None:
            return p("ENOENT", 0)
        kind, obj = found
        if kind == "HWPT_NESTED":  # the SMMU's nested domain has no cache_invalidate_user
            return p("EOPNOTSUPP", 0)
        if kind != "VIOMMU":
            return p("EINVAL", 0)
        if layout in ("badtype", "empty"):  # iommu_copy_struct_from_full_user_array
            return p("EINVAL", 0)
        if layout == "longx":  # copy_struct_from_user: a non-zero byte past the struct
            return p("E2BIG", 0)
        sent = [[c[0], 0] if layout == "short" else list(c) for c in commands]
        ctx = VsmmuContext.from_id_regs(self.facts.regs, vsid_to_sid=dict.fromkeys(obj.vdevs, 0))
        batch = check_vsmmu_invalidation_array(sent, ctx)
        outcome = OK if batch.errno == 0 else errno_name(batch.errno)
        return p(outcome, batch.entry_num)
