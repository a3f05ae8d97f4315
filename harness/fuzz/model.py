"""The fuzzer's model of one iommufd context: which objects exist, who holds whom, and
what each call must return, predicted from drivers/iommu/iommufd/*.c (Linux 7.3) and
its selftest mock without looking at the kernel's answer.

Objects are named by *handles* (model-side, stable) and reached by the kernel's IDs (the
guest reports each new object's ID; a stale handle keeps the ID it had, and the model
resolves an ID the way the kernel does: whatever live object holds it now, or nothing).
``Model.predict(op, args)`` returns a ``Prediction``: the expected outcome (``"ok"`` or
an errno name), result fields a correct kernel returns, the step as sent to the guest
(handles turned into IDs) and ``commit(observation)`` that moves the model on once the
observation matched.  The kernel's check order matters (a malformed array is EINVAL
before a missing ID is ENOENT): each ``_op_*`` follows the order of its ioctl handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

OK = "ok"
BOGUS_ID = 0xFFFF_FF00
PAGES = 16
VEVENTQ_MAX_DEPTH = 1 << 19
IOTLB_ID_MAX = 3
CACHE_ID_MAX = 3
PAGE_SIZE = 4096
U64_MAX = (1 << 64) - 1
#: the mock domain's aperture (iommufd_test.h) and smallest page (2k: selftest.c, amdv1 mock)
APERTURE_START = 1 << 24
APERTURE_LAST = (1 << 31) - 1
MOCK_PAGE = 2048
#: what IOMMU_GET_HW_INFO reports for a mock device (mock_domain_hw_info, iommufd_get_hw_info)
HW_INFO_TYPE_SELFTEST = 0xFEEDBEEF
HW_INFO_SELFTEST_REGVAL = 0xDEADBEEF
HW_INFO_LEN = 8  # struct iommu_test_hw_info {flags, test_reg}
HW_CAP_DIRTY_TRACKING = 1 << 0
HW_CAP_PCI_ATS_NOT_SUPPORTED = 1 << 3
MOCK_PASID_WIDTH = 20
#: PASIDs the rules use: two valid ones and one past a PASID device's max_pasids (1024
#: is left out: the mock fakes an error on every second attach of it)
PASIDS = (1, 2, 1 << MOCK_PASID_WIDTH)

#: the ioctl (or agent-visible call) each operation issues, for coverage
IOCTL = {
    "ioas_alloc": "IOMMU_IOAS_ALLOC",
    "map": "IOMMU_IOAS_MAP",
    "unmap": "IOMMU_IOAS_UNMAP",
    "unmap_all": "IOMMU_IOAS_UNMAP",
    "copy": "IOMMU_IOAS_COPY",
    "mock_device": "IOMMU_TEST_CMD(MOCK_DOMAIN)",
    "replace": "IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE)",
    "hwpt_alloc": "IOMMU_HWPT_ALLOC",
    "viommu_alloc": "IOMMU_VIOMMU_ALLOC",
    "vdevice_alloc": "IOMMU_VDEVICE_ALLOC",
    "veventq_alloc": "IOMMU_VEVENTQ_ALLOC",
    "fault_alloc": "IOMMU_FAULT_QUEUE_ALLOC",
    "destroy": "IOMMU_DESTROY",
    "invalidate": "IOMMU_HWPT_INVALIDATE",
    "trigger_vevent": "IOMMU_TEST_CMD(TRIGGER_VEVENT)",
    "trigger_iopf": "IOMMU_TEST_CMD(TRIGGER_IOPF)",
    "read_vevents": "read(iommufd-viommu-event)",
    "read_faults": "read(iommufd-pgfault)",
    "close_fd": "close(queue fd)",
    "option": "IOMMU_OPTION",
    "hw_info": "IOMMU_GET_HW_INFO",
    "vfio_ioas": "IOMMU_VFIO_IOAS",
    "iova_ranges": "IOMMU_IOAS_IOVA_RANGES",
    "allow_iovas": "IOMMU_IOAS_ALLOW_IOVAS",
    "set_dirty_tracking": "IOMMU_HWPT_SET_DIRTY_TRACKING",
    "dirty_bitmap": "IOMMU_HWPT_GET_DIRTY_BITMAP",
    "mark_dirty": "IOMMU_TEST_CMD(DIRTY)",
    "pasid_attach": "IOMMU_TEST_CMD(PASID_ATTACH)",
    "pasid_replace": "IOMMU_TEST_CMD(PASID_REPLACE)",
    "pasid_detach": "IOMMU_TEST_CMD(PASID_DETACH)",
    "pasid_check": "IOMMU_TEST_CMD(PASID_CHECK_HWPT)",
}

#: HWPT_ALLOC user data variants: (data_type, data_len) as the guest sends them
DATA_KINDS = ("none", "valid", "short", "badtype")
#: invalidation entry variants
ENTRY_KINDS = ("one", "all", "badflags", "badid", "empty", "nolen")
#: IOMMU_OPTION variants: option_id, op
OPTIONS = ("rlimit", "huge", "bogus")
OPTION_OPS = ("get", "set", "bad")
#: IOMMU_GET_HW_INFO in_data_type variants (none: no IOMMU_HW_INFO_FLAG_INPUT_TYPE)
HW_INFO_TYPES = ("none", "default", "selftest", "vtd")
#: IOMMU_IOAS_ALLOW_IOVAS lists: see ``Model._op_allow_iovas``
ALLOW_KINDS = ("clear", "inside", "outside", "inverted", "overlap")
#: IOMMU_HWPT_GET_DIRTY_BITMAP argument variants
BITMAP_SHAPES = ("ok", "zero", "unaligned", "wrap", "badflags")
#: mock device flags (MOCK_FLAGS_DEVICE_*)
DEVICE_FLAGS = ("", "nodirty", "pasid")


@dataclass(eq=False)
class Obj:
    """One modelled kernel object (a mock device is one object with two IDs)."""

    handle: int
    kind: str
    kid: int
    alive: bool = True
    # IOAS: mapped areas as (first page, pages), one per map/copy call
    areas: list[tuple[int, int]] = field(default_factory=list)
    # IOAS: IOMMU_OPTION_HUGE_PAGES; whether an allowed IOVA range lies outside the mock
    # aperture (a new domain's aperture reservation then fails: EADDRINUSE)
    huge: bool = True
    allowed_outside: bool = False
    # HWPT_PAGING / HWPT_NESTED
    ioas: Obj | None = None
    nest_parent: bool = False
    auto: bool = False
    fault: Obj | None = None
    parent: Obj | None = None
    # HWPT_PAGING dirty tracking: allocated with IOMMU_HWPT_ALLOC_DIRTY_TRACKING (dirty
    # ops), tracking enabled, dirty pages; ``coarse``: areas mapped into the domain while
    # large pages were allowed (one entry may span pages: read_and_clear_dirty reports a
    # whole entry); ``fuzzy``: a dirty mark hit one, so the bitmap is not predicted
    pasid_compat: bool = False  # HWPT: allocated with IOMMU_HWPT_ALLOC_PASID
    dirty_ops: bool = False
    tracking: bool = False
    dirty: set[int] = field(default_factory=set)
    coarse: list[tuple[int, int]] = field(default_factory=list)
    fuzzy: bool = False
    viommu: Obj | None = None
    # DEVICE: ``kid`` is the selftest object, ``idev`` the iommufd device
    idev: int = 0
    attached: Obj | None = None
    vdev: Obj | None = None
    mdev_viommu: Obj | None = None
    mdev_vdev_id: int = 0
    no_dirty: bool = False  # MOCK_FLAGS_DEVICE_NO_DIRTY
    pasid_cap: bool = False  # MOCK_FLAGS_DEVICE_PASID
    pasids: dict[int, Obj] = field(default_factory=dict)  # PASID -> attached HWPT
    # VIOMMU
    hwpt: Obj | None = None
    vdevs: dict[int, Obj] = field(default_factory=dict)
    veventq: Obj | None = None
    # VDEVICE
    dev: Obj | None = None
    virt_id: int = 0
    # VEVENTQ / FAULT
    fd_open: bool = False
    depth: int = 0
    deliver: list[tuple[str, int]] = field(default_factory=list)
    num_events: int = 0
    sequence: int = 0
    pending: list[tuple[Obj, Obj]] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "" if self.alive else ", dead"
        return f"{self.kind}#{self.handle}(id={self.kid}{state})"


Commit = Callable[[dict[str, Any]], None]


@dataclass
class Prediction:
    """What the kernel must answer to one step, and how the model moves on."""

    op: str
    wire: dict[str, Any]
    outcome: str
    fields: dict[str, Any] = field(default_factory=dict)
    commit: Commit | None = None
    #: the call as the rule made it: (op, arguments with handles), for replays that shrink
    call: dict[str, Any] = field(default_factory=dict)
    #: the ioctl the step issues (coverage counts ioctl x outcome)
    ioctl: str = ""

    def mismatch(self, observed: dict[str, Any]) -> str | None:
        """None when ``observed`` agrees with the prediction, else what differs."""
        got = observed.get("outcome")
        if got != self.outcome:
            return f"outcome: expected {self.outcome}, got {got}"
        for key, value in self.fields.items():
            if observed.get(key) != value:
                return f"{key}: expected {value!r}, got {observed.get(key)!r}"
        return None

    def settle(self, observed: dict[str, Any]) -> str | None:
        """Judge ``observed`` and, when it agrees, apply it to the model (``commit``);
        None, or what differs or what the model could not take."""
        problem = self.mismatch(observed)
        if problem is None and self.commit is not None:
            try:
                self.commit(observed)
            except ModelError as exc:
                problem = str(exc)
        return problem


class ModelError(AssertionError):
    """The kernel's answer contradicts something the model takes as given (an ID clash)."""


class Model:
    """One iommufd context as the fuzzer believes it to be."""

    #: operation -> the ioctl it issues (a subclass adds its own operations)
    ioctls: ClassVar[dict[str, str]] = IOCTL

    def __init__(self) -> None:
        self.objs: dict[int, Obj] = {}
        #: kernel ID -> (role, object) for live objects; role is the object's kind, or
        #: DEVICE / SELFTEST for a mock device's two IDs
        self.by_kid: dict[int, tuple[str, Obj]] = {}
        self.tombstones: set[int] = set()
        self._next = 0
        #: the VFIO compatibility IOAS (IOMMU_VFIO_IOAS SET; its destroy clears it)
        self.vfio_ioas: Obj | None = None
        #: IOMMU_OPTION_RLIMIT_MODE: account_mode is IOPT_PAGES_ACCOUNT_MM (kzalloc'd
        #: context: NONE, reported as 0)
        self.rlimit_mm = False

    # --- bookkeeping ------------------------------------------------------------------

    def handles(self, *kinds: str, alive: bool | None = None) -> list[int]:
        """Handles of ``kinds`` (all when none given), in creation order."""
        return [
            h
            for h, o in self.objs.items()
            if (not kinds or o.kind in kinds) and (alive is None or o.alive == alive)
        ]

    def kid(self, handle: int | None, role: str = "") -> int:
        """The ID a handle names (BOGUS_ID for None); ``role`` DEVICE for a device's idev."""
        if handle is None:
            return BOGUS_ID
        obj = self.objs[handle]
        return obj.idev if role == "DEVICE" and obj.kind == "DEVICE" else obj.kid

    def lookup(self, kid: int) -> tuple[str, Obj] | None:
        """What the kernel finds at ``kid``: (type, object), or None (ENOENT)."""
        return self.by_kid.get(kid)

    def typed(self, kid: int, kind: str) -> Obj | None:
        """``iommufd_get_object(ictx, kid, kind)``: the object, or None (ENOENT)."""
        found = self.by_kid.get(kid)
        return found[1] if found is not None and found[0] == kind else None

    def _new(self, kind: str, kid: int, **attrs: Any) -> Obj:
        if kid in self.by_kid:
            raise ModelError(f"kernel gave ID {kid} to a new {kind}; it names {self.by_kid[kid]}")
        if kid in self.tombstones:
            raise ModelError(f"kernel gave tombstoned ID {kid} to a new {kind}")
        obj = Obj(self._next, kind, kid, **attrs)
        self._next += 1
        self.objs[obj.handle] = obj
        self.by_kid[kid] = (kind, obj)
        return obj

    def _free(self, obj: Obj, *, tombstone: bool = False) -> None:
        obj.alive = False
        self.by_kid.pop(obj.kid, None)
        if obj.kind == "DEVICE":
            self.by_kid.pop(obj.idev, None)
        if tombstone:
            self.tombstones.add(obj.kid)

    def live(self, kind: str) -> list[Obj]:
        return [o for o in self.objs.values() if o.alive and o.kind == kind]

    def open_queue_fds(self) -> int:
        """Queue fds the guest must hold open now (an invariant read back from /proc)."""
        return sum(1 for o in self.objs.values() if o.fd_open)

    # --- the holds relation -----------------------------------------------------------

    def busy(self, obj: Obj) -> bool:
        """Whether something holds a reference that makes IOMMU_DESTROY return EBUSY."""
        devices = self.live("DEVICE")
        if obj.kind == "IOAS":
            return any(h.ioas is obj for h in self.live("HWPT_PAGING"))
        if obj.kind == "HWPT_PAGING":
            return (
                any(d.attached is obj for d in devices)
                or self._pasid_held(obj)
                or any(n.parent is obj and n.viommu is None for n in self.live("HWPT_NESTED"))
                or any(v.hwpt is obj for v in self.live("VIOMMU"))
            )
        if obj.kind == "HWPT_NESTED":
            return any(d.attached is obj for d in devices) or self._pasid_held(obj)
        if obj.kind == "VIOMMU":
            return (
                any(n.viommu is obj for n in self.live("HWPT_NESTED"))
                or bool(obj.vdevs)
                or obj.veventq is not None
            )
        if obj.kind == "FAULT":
            return obj.fd_open or any(
                h.fault is obj for h in self.live("HWPT_PAGING") + self.live("HWPT_NESTED")
            )
        if obj.kind == "VEVENTQ":
            return obj.fd_open
        return False

    def _pasid_held(self, hwpt: Obj) -> bool:
        """A PASID attachment holds ``hwpt`` (iommufd_hw_pagetable_attach takes a user
        reference; a destroyed mock device detaches only IOMMU_NO_PASID, so it keeps them)."""
        return any(hwpt in d.pasids.values() for d in self.objs.values() if d.kind == "DEVICE")

    # --- prediction -------------------------------------------------------------------

    def predict(self, op: str, **args: Any) -> Prediction:
        """The kernel's answer to ``op`` with handle arguments ``args``."""
        fn: Callable[..., Prediction] = getattr(self, f"_op_{op}")
        pred = fn(**args)
        pred.call = {"op": op, "args": dict(args)}
        pred.ioctl = self.ioctls[op]
        return pred

    def _p(
        self,
        op: str,
        wire: dict[str, Any],
        outcome: str,
        commit: Commit | None = None,
        **fields: Any,
    ) -> Prediction:
        return Prediction(op, {"op": op, "args": wire}, outcome, fields, commit)

    # IOAS ------------------------------------------------------------------------------

    def _op_ioas_alloc(self) -> Prediction:
        def commit(obs: dict[str, Any]) -> None:
            self._new("IOAS", obs["id"])

        return self._p("ioas_alloc", {}, OK, commit)

    def domains(self, ioas: Obj) -> list[Obj]:
        """The paging HWPTs whose domains mirror ``ioas`` (iopt->domains)."""
        return [h for h in self.live("HWPT_PAGING") if h.ioas is ioas]

    def _add_area(self, ioas: Obj, area: tuple[int, int]) -> None:
        """A map/copy landed: every domain of the IOAS maps it (large pages if allowed)."""
        ioas.areas.append(area)
        for hwpt in self.domains(ioas):
            if ioas.huge and area[1] > 1:
                hwpt.coarse.append(area)

    def _remove_area(self, ioas: Obj, area: tuple[int, int]) -> None:
        """An unmap removed ``area``: its pages leave every domain, dirty bits with them."""
        ioas.areas.remove(area)
        pages = set(range(area[0], area[0] + area[1]))
        for hwpt in self.domains(ioas):
            hwpt.dirty -= pages
            if area in hwpt.coarse:
                hwpt.coarse.remove(area)
            hwpt.fuzzy = hwpt.fuzzy and bool(hwpt.coarse)

    def _new_paging(self, kid: int, ioas: Obj, **attrs: Any) -> Obj:
        """A paging HWPT over ``ioas``: iopt_table_add_domain fills it with the IOAS's areas."""
        hwpt = self._new("HWPT_PAGING", kid, ioas=ioas, **attrs)
        hwpt.coarse = [a for a in ioas.areas if ioas.huge and a[1] > 1]
        return hwpt

    def _op_map(self, ioas: int | None, page: int, npages: int) -> Prediction:
        wire = {"ioas": self.kid(ioas), "page": page, "npages": npages}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("map", wire, "ENOENT")
        if _overlaps(target.areas, page, npages):
            return self._p("map", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            self._add_area(target, (page, npages))

        return self._p("map", wire, OK, commit)

    def _op_unmap(self, ioas: int | None, page: int, npages: int) -> Prediction:
        wire = {"ioas": self.kid(ioas), "page": page, "npages": npages}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("unmap", wire, "ENOENT")
        last = page + npages - 1
        hit = sorted(a for a in target.areas if a[0] <= last and a[0] + a[1] - 1 >= page)
        removed: list[tuple[int, int]] = []
        outcome = OK
        for area in hit:  # the kernel unmaps in IOVA order and stops at a straddling area
            if area[0] < page or area[0] + area[1] - 1 > last:
                outcome = "ENOENT"
                break
            removed.append(area)
        if not hit:
            outcome = "ENOENT"

        def commit(obs: dict[str, Any]) -> None:
            for area in removed:
                self._remove_area(target, area)

        if outcome != OK:
            return self._p("unmap", wire, outcome, commit)
        return self._p("unmap", wire, OK, commit, unmapped=sum(a[1] for a in removed))

    def _op_unmap_all(self, ioas: int | None) -> Prediction:
        wire = {"ioas": self.kid(ioas)}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("unmap_all", wire, "ENOENT")
        total = sum(a[1] for a in target.areas)

        def commit(obs: dict[str, Any]) -> None:
            for area in list(target.areas):
                self._remove_area(target, area)

        return self._p("unmap_all", wire, OK, commit, unmapped=total)

    def _op_copy(
        self, dst: int | None, src: int | None, src_page: int, dst_page: int, npages: int
    ) -> Prediction:
        wire = {
            "dst": self.kid(dst),
            "src": self.kid(src),
            "src_page": src_page,
            "dst_page": dst_page,
            "npages": npages,
        }
        source = self.typed(wire["src"], "IOAS")
        if source is None:
            return self._p("copy", wire, "ENOENT")
        if not _covered(source.areas, src_page, npages):
            return self._p("copy", wire, "ENOENT")
        target = self.typed(wire["dst"], "IOAS")
        if target is None:
            return self._p("copy", wire, "ENOENT")
        if _overlaps(target.areas, dst_page, npages):
            return self._p("copy", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            self._add_area(target, (dst_page, npages))

        return self._p("copy", wire, OK, commit)

    # devices and attachment ------------------------------------------------------------

    def _attach_check(
        self, dev: Obj | None, pt: tuple[str, Obj] | None, no_dirty: bool = False
    ) -> str:
        """The errno of attaching a mock device to ``pt`` (OK when it attaches);
        ``no_dirty``: a new device's MOCK_FLAGS_DEVICE_NO_DIRTY (``dev`` None)."""
        if pt is None:
            return "ENOENT"
        kind, obj = pt
        if kind not in ("HWPT_PAGING", "HWPT_NESTED", "IOAS"):
            return "EINVAL"
        if kind == "IOAS" and self._auto_domain(obj) is None and obj.allowed_outside:
            return "EADDRINUSE"  # the new auto domain's aperture reservation
        if (
            dev is not None
            and dev.pasids
            and obj is not dev.attached  # do_replace: the same HWPT is a no-op first
            and (kind == "IOAS" or not obj.pasid_compat)
        ):
            return "EINVAL"  # iommufd_hwpt_pasid_compat: PASIDs attached, auto domains never
        if obj.dirty_ops and (dev.no_dirty if dev is not None else no_dirty):
            return "EINVAL"  # mock_domain_nop_attach
        if (
            kind == "HWPT_NESTED"
            and obj.viommu is not None
            and (dev is None or dev.vdev is None or dev.vdev.viommu is not obj.viommu)
        ):
            return "ENOENT"  # iommufd_viommu_get_vdev_id: no vDEVICE for this device
        return OK

    def _auto_domain(self, ioas: Obj) -> Obj | None:
        """The auto domain of ``ioas`` a mock device would share (all are compatible)."""
        autos = [h for h in self.live("HWPT_PAGING") if h.auto and h.ioas is ioas]
        return autos[0] if autos else None

    def _target_hwpt(self, kind: str, obj: Obj, observed: int) -> Obj:
        """The HWPT a successful attach to ``obj`` landed on (a new auto domain if needed)."""
        if kind != "IOAS":
            return obj
        auto = self._auto_domain(obj)
        if auto is not None:
            if observed != auto.kid:
                raise ModelError(f"attach to IOAS {obj} gave HWPT {observed}, not {auto}")
            return auto
        return self._new_paging(observed, obj, auto=True)

    def _move(self, dev: Obj, new: Obj) -> None:
        """Attach ``dev`` to ``new``: the mock's vIOMMU bookkeeping, faults, auto domains."""
        old = dev.attached
        if old is new:
            return
        viommu = new.viommu if new.kind == "HWPT_NESTED" else None
        if viommu is not dev.mdev_viommu:
            dev.mdev_viommu = viommu
            dev.mdev_vdev_id = dev.vdev.virt_id if viommu is not None and dev.vdev else 0
        dev.attached = new
        if old is not None:
            self._leave(dev, old)

    def _leave(self, dev: Obj, old: Obj) -> None:
        """``dev`` left ``old``: pending faults auto-answered, an unused auto domain freed."""
        for fault in self.live("FAULT"):
            fault.pending = [p for p in fault.pending if not (p[0] is dev and p[1] is old)]
        if old.auto and not any(d.attached is old for d in self.live("DEVICE")):
            self._free(old)

    def free_ids(self, count: int) -> list[int]:
        """The IDs the kernel hands out next: the lowest free ones (xa_alloc, from 1)."""
        out: list[int] = []
        kid = 1
        while len(out) < count:
            if kid not in self.by_kid and kid not in self.tombstones:
                out.append(kid)
            kid += 1
        return out

    def _op_mock_device(self, pt: int | None, flags: str = "") -> Prediction:
        """MOCK_DOMAIN (``flags`` "") or MOCK_DOMAIN_FLAGS with one of DEVICE_FLAGS."""
        wire: dict[str, Any] = {"pt": self.kid(pt)}
        if flags:
            wire["flags"] = flags
        # MOCK_DOMAIN allocates its selftest object (finalized only on success: ENOENT
        # until then) and binds the device (finalized at once) before it looks up pt_id:
        # a pt_id naming the new device's own ID finds a device, not a page table
        _, idev = self.free_ids(2)
        if wire["pt"] == idev:
            return self._p("mock_device", wire, "EINVAL")
        found = self.lookup(wire["pt"])
        outcome = self._attach_check(None, found, no_dirty=flags == "nodirty")
        if outcome != OK:
            return self._p("mock_device", wire, outcome)
        assert found is not None
        kind, obj = found
        expect_hwpt = {}
        if kind != "IOAS":
            expect_hwpt = {"hwpt": obj.kid}
        elif (auto := self._auto_domain(obj)) is not None:
            expect_hwpt = {"hwpt": auto.kid}

        def commit(obs: dict[str, Any]) -> None:
            dev = self._new(
                "DEVICE", obs["stdev"], idev=obs["idev"],
                no_dirty=flags == "nodirty", pasid_cap=flags == "pasid",
            )  # fmt: skip
            self.by_kid[dev.idev] = ("DEVICE", dev)
            self.by_kid[dev.kid] = ("SELFTEST", dev)
            self._move(dev, self._target_hwpt(kind, obj, obs["hwpt"]))

        return self._p("mock_device", wire, OK, commit, **expect_hwpt)

    def _op_replace(self, dev: int | None, pt: int | None) -> Prediction:
        wire = {"dev": self.kid(dev), "pt": self.kid(pt)}
        device = self.typed(wire["dev"], "SELFTEST")
        if device is None:
            return self._p("replace", wire, "ENOENT")
        found = self.lookup(wire["pt"])
        outcome = self._attach_check(device, found)
        if outcome != OK:
            return self._p("replace", wire, outcome)
        assert found is not None
        kind, obj = found
        expect: dict[str, Any] = {}
        if kind != "IOAS":
            expect = {"hwpt": obj.kid}
        elif (auto := self._auto_domain(obj)) is not None:
            expect = {"hwpt": auto.kid}

        def commit(obs: dict[str, Any]) -> None:
            self._move(device, self._target_hwpt(kind, obj, obs["hwpt"]))

        return self._p("replace", wire, OK, commit, **expect)

    # HWPTs -----------------------------------------------------------------------------

    def _op_hwpt_alloc(
        self,
        dev: int | None,
        pt: int | None,
        nest_parent: bool = False,
        data: str = "none",
        fault: int | None = -1,
        dirty: bool = False,
        pasid: bool = False,
    ) -> Prediction:
        """IOMMU_HWPT_ALLOC; ``fault`` -1 for none, else a fault handle (None: bogus);
        ``dirty``: IOMMU_HWPT_ALLOC_DIRTY_TRACKING."""
        wire: dict[str, Any] = {
            "dev": self.kid(dev, "DEVICE"),
            "pt": self.kid(pt),
            "nest_parent": nest_parent,
            "data": data,
            "fault": -1 if fault == -1 else self.kid(fault),
        }
        if dirty:
            wire["dirty"] = True
        if pasid:
            wire["pasid"] = True
        has_fault = fault != -1

        def p(outcome: str, commit: Commit | None = None) -> Prediction:
            return self._p("hwpt_alloc", wire, outcome, commit)

        idev = self.typed(wire["dev"], "DEVICE")
        if idev is None:
            return p("ENOENT")
        found = self.lookup(wire["pt"])
        if found is None:
            return p("EINVAL")
        kind, obj = found
        if kind == "IOAS":  # iommufd_hwpt_paging_alloc
            if dirty and idev.no_dirty:  # !device_iommu_capable(DIRTY_TRACKING)
                return p("EOPNOTSUPP")
            if has_fault and nest_parent:
                return p("EOPNOTSUPP")
            if data == "badtype":
                return p("EOPNOTSUPP")
            if data == "short":
                return p("EINVAL")
            if obj.allowed_outside:  # iopt_table_add_domain reserves outside the aperture
                return p("EADDRINUSE")
            new_kind = "HWPT_PAGING"
            attrs: dict[str, Any] = {"ioas": obj, "nest_parent": nest_parent, "dirty_ops": dirty}
        elif kind in ("HWPT_PAGING", "VIOMMU"):
            if nest_parent or dirty or data == "none":  # flags other than FAULT_ID/PASID
                return p("EOPNOTSUPP")
            if kind == "HWPT_PAGING" and (obj.auto or not obj.nest_parent):
                return p("EINVAL")
            if data == "badtype":
                return p("EOPNOTSUPP")
            if data == "short":
                return p("EINVAL")
            if kind == "HWPT_PAGING":
                new_kind, attrs = "HWPT_NESTED", {"parent": obj}
            else:
                new_kind, attrs = "HWPT_NESTED", {"parent": obj.hwpt, "viommu": obj}
        else:
            return p("EINVAL")
        outcome, fault_obj = self._hwpt_fault(wire)
        if outcome != OK:
            return p(outcome)

        def commit(obs: dict[str, Any]) -> None:
            if new_kind == "HWPT_PAGING":
                self._new_paging(obs["id"], fault=fault_obj, pasid_compat=pasid, **attrs)
            else:
                self._new(new_kind, obs["id"], fault=fault_obj, pasid_compat=pasid, **attrs)

        return p(OK, commit)

    def _hwpt_fault(self, wire: dict[str, Any]) -> tuple[str, Obj | None]:
        """IOMMU_HWPT_ALLOC's fault queue, looked up after the HWPT is made
        (iommufd_get_fault): (OK, the queue, or None when ``wire["fault"]`` is -1), or
        ("ENOENT", None) when the ID names no fault queue."""
        if wire["fault"] == -1:
            return OK, None
        fault = self.typed(wire["fault"], "FAULT")
        return (OK, fault) if fault is not None else ("ENOENT", None)

    # vIOMMU ----------------------------------------------------------------------------

    def _op_viommu_alloc(self, dev: int | None, hwpt: int | None) -> Prediction:
        wire = {"dev": self.kid(dev, "DEVICE"), "hwpt": self.kid(hwpt)}
        if self.typed(wire["dev"], "DEVICE") is None:
            return self._p("viommu_alloc", wire, "ENOENT")
        parent = self.typed(wire["hwpt"], "HWPT_PAGING")
        if parent is None:
            return self._p("viommu_alloc", wire, "ENOENT")
        if not parent.nest_parent:
            return self._p("viommu_alloc", wire, "EINVAL")

        def commit(obs: dict[str, Any]) -> None:
            self._new("VIOMMU", obs["id"], hwpt=parent)

        return self._p("viommu_alloc", wire, OK, commit)

    def _op_vdevice_alloc(self, viommu: int | None, dev: int | None, virt_id: int) -> Prediction:
        wire: dict[str, Any] = {
            "viommu": self.kid(viommu),
            "dev": self.kid(dev, "DEVICE"),
            "virt_id": virt_id,
        }
        target = self.typed(wire["viommu"], "VIOMMU")
        if target is None:
            return self._p("vdevice_alloc", wire, "ENOENT")
        device = self.typed(wire["dev"], "DEVICE")
        if device is None:
            return self._p("vdevice_alloc", wire, "ENOENT")
        if device.vdev is not None or virt_id in target.vdevs:
            return self._p("vdevice_alloc", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            vdev = self._new("VDEVICE", obs["id"], viommu=target, dev=device, virt_id=virt_id)
            target.vdevs[virt_id] = vdev
            device.vdev = vdev

        return self._p("vdevice_alloc", wire, OK, commit)

    def _op_veventq_alloc(self, viommu: int | None, depth: int) -> Prediction:
        wire = {"viommu": self.kid(viommu), "depth": depth}
        if not depth or depth > VEVENTQ_MAX_DEPTH:
            return self._p("veventq_alloc", wire, "EINVAL")
        target = self.typed(wire["viommu"], "VIOMMU")
        if target is None:
            return self._p("veventq_alloc", wire, "ENOENT")
        if target.veventq is not None:
            return self._p("veventq_alloc", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            target.veventq = self._new(
                "VEVENTQ", obs["id"], viommu=target, depth=depth, fd_open=True
            )

        return self._p("veventq_alloc", wire, OK, commit)

    def _op_vfio_ioas(self, action: str, ioas: int | None = None) -> Prediction:
        """IOMMU_VFIO_IOAS (iommufd_vfio_ioas): ``get`` the compat IOAS (ENODEV when none
        is set or it was destroyed: iommufd_object_remove clears it), ``set`` one (ENOENT:
        not an IOAS), ``clear`` it; ``bad``: an unknown op (EOPNOTSUPP)."""
        wire: dict[str, Any] = {"action": action, "ioas": self.kid(ioas)}
        if action == "bad":
            return self._p("vfio_ioas", wire, "EOPNOTSUPP")
        if action == "get":
            compat = self.vfio_ioas if self.vfio_ioas is not None and self.vfio_ioas.alive else None
            if compat is None:
                return self._p("vfio_ioas", wire, "ENODEV")
            return self._p("vfio_ioas", wire, OK, None, ioas=compat.kid)
        target = self.typed(wire["ioas"], "IOAS") if action == "set" else None
        if action == "set" and target is None:
            return self._p("vfio_ioas", wire, "ENOENT")

        def commit(obs: dict[str, Any]) -> None:
            self.vfio_ioas = target

        return self._p("vfio_ioas", wire, OK, commit)

    def _op_fault_alloc(self) -> Prediction:
        def commit(obs: dict[str, Any]) -> None:
            self._new("FAULT", obs["id"], fd_open=True)

        return self._p("fault_alloc", {}, OK, commit)

    # destroy ---------------------------------------------------------------------------

    def _op_destroy(self, target: int | None, role: str = "") -> Prediction:
        wire = {"id": self.kid(target, role)}
        found = self.lookup(wire["id"])
        if found is None:
            return self._p("destroy", wire, "ENOENT")
        kind, obj = found
        if kind == "DEVICE":  # the bound driver (the mock) holds the iommufd device
            return self._p("destroy", wire, "EBUSY")
        if self.busy(obj):
            return self._p("destroy", wire, "EBUSY")

        def commit(obs: dict[str, Any]) -> None:
            self._destroy(obj)

        return self._p("destroy", wire, OK, commit)

    def _destroy(self, obj: Obj) -> None:
        if obj.kind == "DEVICE":  # the selftest object: detach, then unbind
            old = obj.attached
            obj.attached = None
            if old is not None:
                self._leave(obj, old)
            if obj.vdev is not None and obj.vdev.alive:  # its vDEVICE goes, leaving a tombstone
                vdev = obj.vdev
                assert vdev.viommu is not None
                vdev.viommu.vdevs.pop(vdev.virt_id, None)
                self._free(vdev, tombstone=True)
        elif obj.kind == "VDEVICE":
            assert obj.viommu is not None and obj.dev is not None
            obj.viommu.vdevs.pop(obj.virt_id, None)
            obj.dev.vdev = None
        elif obj.kind == "VEVENTQ":
            assert obj.viommu is not None
            obj.viommu.veventq = None
        self._free(obj)

    # invalidation ----------------------------------------------------------------------

    def _op_invalidate(
        self, target: int | None, data_type: str, entry: str, index: int = 0, virt_id: int = 0
    ) -> Prediction:
        """``data_type`` picks the entry layout: ``hwpt`` (8 bytes: flags, iotlb_id),
        ``viommu`` (12 bytes: flags, vdev_id, cache_id) or ``badtype`` (the hwpt layout
        with an unknown type).  The mock's two selftest types share one value
        (0xdeadbeef), so a layout sent to the other kind of target is accepted by type: a
        vIOMMU zero-extends the short IOTLB entry (a full-array copy), a nested HWPT
        refuses the long vIOMMU entry with EINVAL whatever its extra bytes hold (the
        per-entry copy checks entry_len <= sizeof first; the fuzzer found the model's
        first guess, E2BIG only for non-zero extra bytes, wrong).  ``entry`` is one of
        ENTRY_KINDS; ``index`` the IOTLB or cache entry; ``virt_id`` the vDEVICE named."""
        wire: dict[str, Any] = {
            "target": self.kid(target),
            "data_type": data_type,
            "entry": entry,
            "index": index,
            "virt_id": virt_id,
        }

        def p(outcome: str, done: int) -> Prediction:
            return self._p("invalidate", wire, outcome, None, done=done)

        if entry == "nolen":
            return p("EINVAL", 0)
        found = self.lookup(wire["target"])
        if found is None:
            return p("ENOENT", 0)
        kind, obj = found
        if kind not in ("HWPT_NESTED", "VIOMMU"):
            return p("EINVAL", 0)
        if data_type == "badtype":
            return p("EINVAL", 0)
        if entry == "empty":
            return p(OK, 0)
        flags = {"all": 1, "badflags": 0xFFFF_FFFF}.get(entry, 0)
        bad = entry == "badid"
        if data_type == "hwpt":  # {flags, iotlb_id}
            fields = [flags, IOTLB_ID_MAX + 1 if bad else index]
        else:  # {flags, vdev_id, cache_id}
            fields = [flags, virt_id, CACHE_ID_MAX + 1 if bad else index]
        if kind == "HWPT_NESTED":
            if len(fields) > 2:  # __iommu_copy_struct_from_user: entry_len > sizeof
                return p("EINVAL", 0)
            if fields[0] & ~1:
                return p("EOPNOTSUPP", 0)
            if fields[1] > IOTLB_ID_MAX:
                return p("EINVAL", 0)
            return p(OK, 1)
        fields = [*fields, 0][:3]
        if fields[0] & ~1:
            return p("EOPNOTSUPP", 0)
        if fields[2] > CACHE_ID_MAX or fields[1] not in obj.vdevs:
            return p("EINVAL", 0)
        return p(OK, 1)

    # events and faults -----------------------------------------------------------------

    def _op_trigger_vevent(self, dev: int | None) -> Prediction:
        wire = {"dev": self.kid(dev, "DEVICE")}
        device = self.typed(wire["dev"], "DEVICE")
        if device is None or device.mdev_viommu is None or not device.mdev_vdev_id:
            return self._p("trigger_vevent", wire, "ENOENT")
        queue = device.mdev_viommu.veventq
        if queue is None:
            return self._p("trigger_vevent", wire, "EOPNOTSUPP")

        def commit(obs: dict[str, Any]) -> None:
            assert queue is not None
            if queue.deliver and queue.deliver[-1][0] == "lost":
                queue.deliver.pop()
            if queue.num_events == queue.depth:
                queue.deliver.append(("lost", queue.sequence))
            else:
                queue.deliver.append(("event", queue.sequence))
                queue.num_events += 1
            queue.sequence = (queue.sequence + 1) & 0x7FFF_FFFF

        return self._p("trigger_vevent", wire, OK, commit)

    def _op_trigger_iopf(self, dev: int | None) -> Prediction:
        wire = {"dev": self.kid(dev, "DEVICE")}
        device = self.typed(wire["dev"], "DEVICE")
        if device is None:
            return self._p("trigger_iopf", wire, "ENOENT")
        hwpt = device.attached

        def commit(obs: dict[str, Any]) -> None:
            if hwpt is not None and hwpt.fault is not None:
                hwpt.fault.pending.append((device, hwpt))

        return self._p("trigger_iopf", wire, OK, commit)

    def _queue(self, queue: int | None, kind: str) -> Obj | None:
        """The queue whose fd the guest holds under this ID (None: EBADF)."""
        kid = self.kid(queue)
        for obj in self.objs.values():
            if obj.kind == kind and obj.fd_open and obj.kid == kid:
                return obj
        return None

    def _op_read_vevents(self, queue: int | None) -> Prediction:
        wire = {"queue": self.kid(queue)}
        obj = self._queue(queue, "VEVENTQ")
        if obj is None:
            return self._p("read_vevents", wire, "EBADF")
        records = [list(r) for r in obj.deliver]

        def commit(obs: dict[str, Any]) -> None:
            obj.deliver.clear()
            obj.num_events = 0

        return self._p("read_vevents", wire, OK, commit, records=records)

    def _op_read_faults(self, queue: int | None) -> Prediction:
        wire = {"queue": self.kid(queue)}
        obj = self._queue(queue, "FAULT")
        if obj is None:
            return self._p("read_faults", wire, "EBADF")
        count = len(obj.pending)

        def commit(obs: dict[str, Any]) -> None:
            obj.pending.clear()

        return self._p("read_faults", wire, OK, commit, records=count)

    def _op_close_fd(self, queue: int | None) -> Prediction:
        wire = {"queue": self.kid(queue)}
        obj = None
        for candidate in self.objs.values():
            if candidate.fd_open and candidate.kid == wire["queue"]:
                obj = candidate
        if obj is None:
            return self._p("close_fd", wire, "EBADF")
        closing = obj

        def commit(obs: dict[str, Any]) -> None:
            closing.fd_open = False

        return self._p("close_fd", wire, OK, commit)

    # IOMMU_OPTION ----------------------------------------------------------------------

    def _op_option(
        self, option: str, action: str, target: int | None = -1, value: int = 0
    ) -> Prediction:
        """IOMMU_OPTION: ``option`` one of OPTIONS, ``action`` (the op field) one of
        OPTION_OPS; ``target`` -1 sends object_id 0, else a handle (None: bogus).
        iommufd_option switches on option_id first; RLIMIT_MODE refuses any object_id,
        HUGE_PAGES looks the IOAS up before it reads the op (iommufd_option_rlimit_mode,
        iommufd_ioas_option)."""
        wire: dict[str, Any] = {
            "option": option,
            "action": action,
            "object_id": 0 if target == -1 else self.kid(target),
            "value": value,
        }

        def p(outcome: str, commit: Commit | None = None, **fields: Any) -> Prediction:
            return self._p("option", wire, outcome, commit, **fields)

        if option == "bogus":
            return p("EOPNOTSUPP")
        if option == "rlimit":
            if wire["object_id"]:
                return p("EOPNOTSUPP")
            if action == "get":
                return p(OK, value=int(self.rlimit_mm))
            if action == "bad":
                return p("EOPNOTSUPP")
            # capable(CAP_SYS_RESOURCE): the agent runs as root; then xa_empty(objects)
            if self.by_kid or self.tombstones:
                return p("EBUSY")
            if value not in (0, 1):
                return p("EINVAL")

            def set_mode(obs: dict[str, Any]) -> None:
                self.rlimit_mm = value == 1

            return p(OK, set_mode)
        ioas = self.typed(wire["object_id"], "IOAS")
        if ioas is None:
            return p("ENOENT")
        if action == "get":
            return p(OK, value=int(ioas.huge))
        if action == "bad":
            return p("EOPNOTSUPP")
        if value == 1:  # iopt_enable_large_pages

            def enable(obs: dict[str, Any]) -> None:
                ioas.huge = True

            return p(OK, enable)
        if value != 0:
            return p("EINVAL")
        # iopt_disable_large_pages: refused once a domain has pages mapped
        if ioas.huge and self.domains(ioas) and ioas.areas:
            return p("EINVAL")

        def disable(obs: dict[str, Any]) -> None:
            ioas.huge = False

        return p(OK, disable)

    # IOMMU_GET_HW_INFO ------------------------------------------------------------------

    def _op_hw_info(self, dev: int | None, data_type: str = "none") -> Prediction:
        """IOMMU_GET_HW_INFO of a mock device; ``data_type`` one of HW_INFO_TYPES.  The
        mock answers the default and its own type (mock_domain_hw_info); the core adds
        the capabilities (dirty tracking unless NO_DIRTY; ATS never: not a PCI device)
        and log2 of max_pasids (MOCK_PASID_WIDTH for a PASID device, else 0)."""
        wire: dict[str, Any] = {"dev": self.kid(dev, "DEVICE"), "data_type": data_type}
        device = self.typed(wire["dev"], "DEVICE")
        if device is None:
            return self._p("hw_info", wire, "ENOENT")
        if data_type not in ("none", "default", "selftest"):
            return self._p("hw_info", wire, "EOPNOTSUPP")
        caps = HW_CAP_PCI_ATS_NOT_SUPPORTED | (0 if device.no_dirty else HW_CAP_DIRTY_TRACKING)
        fields = {
            "type": HW_INFO_TYPE_SELFTEST,
            "length": HW_INFO_LEN,
            "test_reg": HW_INFO_SELFTEST_REGVAL,
            "capabilities": caps,
            "max_pasid_log2": MOCK_PASID_WIDTH if device.pasid_cap else 0,
        }
        return self._p("hw_info", wire, OK, None, **fields)

    # allowed and usable IOVA ranges ----------------------------------------------------

    def _op_iova_ranges(self, ioas: int | None, capacity: int = 8) -> Prediction:
        """IOMMU_IOAS_IOVA_RANGES: the holes of the reserved tree.  Each mock domain
        reserves everything outside its aperture (iopt_table_add_domain); mock devices have
        no reserved regions.  EMSGSIZE when ``capacity`` is too small (after the respond)."""
        wire = {"ioas": self.kid(ioas), "capacity": capacity}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("iova_ranges", wire, "ENOENT")
        domains = self.domains(target)
        ranges = [[APERTURE_START, APERTURE_LAST]] if domains else [[0, U64_MAX]]
        if len(ranges) > capacity:
            return self._p("iova_ranges", wire, "EMSGSIZE")
        # iopt_calculate_iova_alignment: PAGE_SIZE without large pages, the domains' page
        align = max(1 if target.huge else PAGE_SIZE, MOCK_PAGE if domains else 1)
        return self._p("iova_ranges", wire, OK, None, ranges=ranges, alignment=align)

    def _op_allow_iovas(self, ioas: int | None, kind: str) -> Prediction:
        """IOMMU_IOAS_ALLOW_IOVAS with a list of ALLOW_KINDS: ``clear`` (none), ``inside``
        (16 pages in the aperture), ``outside`` (below the aperture), ``inverted`` (start
        == last), ``overlap`` (two ranges sharing a page).  iommufd_ioas_load_iovas refuses
        the last two (EINVAL); iopt_set_allow_iova refuses a range over a reserved one
        (EADDRINUSE: outside the aperture while the IOAS has a domain).  Allowed ranges
        only steer IOVA allocation (the fuzzer maps at fixed IOVAs), but a range outside
        the aperture makes a new domain's reservation fail (``_attach_check``)."""
        wire: dict[str, Any] = {"ioas": self.kid(ioas), "kind": kind}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("allow_iovas", wire, "ENOENT")
        if kind in ("inverted", "overlap"):
            return self._p("allow_iovas", wire, "EINVAL")
        outside = kind == "outside"
        if outside and self.domains(target):
            return self._p("allow_iovas", wire, "EADDRINUSE")

        def commit(obs: dict[str, Any]) -> None:
            target.allowed_outside = outside

        return self._p("allow_iovas", wire, OK, commit)

    # dirty tracking --------------------------------------------------------------------

    def _op_set_dirty_tracking(
        self, hwpt: int | None, enable: bool, badflags: bool = False
    ) -> Prediction:
        """IOMMU_HWPT_SET_DIRTY_TRACKING (iommufd_hwpt_set_dirty_tracking): flags, then
        a HWPT_PAGING (ENOENT for any other type), then dirty ops (EOPNOTSUPP unless
        allocated with DIRTY_TRACKING); enabling clears every dirty bit first."""
        wire: dict[str, Any] = {"hwpt": self.kid(hwpt), "enable": enable, "badflags": badflags}
        if badflags:
            return self._p("set_dirty_tracking", wire, "EOPNOTSUPP")
        target = self.typed(wire["hwpt"], "HWPT_PAGING")
        if target is None:
            return self._p("set_dirty_tracking", wire, "ENOENT")
        if not target.dirty_ops:
            return self._p("set_dirty_tracking", wire, "EOPNOTSUPP")

        def commit(obs: dict[str, Any]) -> None:
            if enable:  # iopt_clear_dirty_data
                target.dirty.clear()
                target.fuzzy = False
            target.tracking = enable

        return self._p("set_dirty_tracking", wire, OK, commit)

    def _op_mark_dirty(self, hwpt: int | None, page: int, npages: int, mask: int) -> Prediction:
        """IOMMU_TEST_OP_DIRTY: mark the pages of ``mask`` (bit i: page + i) dirty in a
        mock domain (iommufd_test_dirty).  Needs tracking on (EINVAL); an unmapped page
        marks nothing but still counts in out_nr_dirty."""
        wire = {"hwpt": self.kid(hwpt), "page": page, "npages": npages, "mask": mask}
        target = self.typed(wire["hwpt"], "HWPT_PAGING")
        if target is None:
            return self._p("mark_dirty", wire, "ENOENT")
        if not target.tracking:
            return self._p("mark_dirty", wire, "EINVAL")
        marked = [page + i for i in range(npages) if mask >> i & 1]
        assert target.ioas is not None
        ioas = target.ioas

        def commit(obs: dict[str, Any]) -> None:
            for p in marked:
                area = next((a for a in ioas.areas if a[0] <= p < a[0] + a[1]), None)
                if area is None:
                    continue
                target.dirty.add(p)
                if area in target.coarse:
                    target.fuzzy = True

        return self._p("mark_dirty", wire, OK, commit, count=len(marked))

    def _op_dirty_bitmap(
        self, hwpt: int | None, page: int, npages: int, shape: str = "ok", no_clear: bool = False
    ) -> Prediction:
        """IOMMU_HWPT_GET_DIRTY_BITMAP over pages [page, page + npages), one bit per page;
        ``shape`` one of BITMAP_SHAPES.  Order (iommufd_hwpt_get_dirty_bitmap): flags,
        the HWPT_PAGING, iommufd_check_iova_range (EINVAL for zero length or an unaligned
        IOVA, EOVERFLOW for a wrap), then dirty ops (EOPNOTSUPP).  Only the run of
        mapped pages from ``page`` is read; without NO_CLEAR the bits read are cleared.
        ``bitmap`` is predicted unless a mark hit a large-page entry (``Obj.fuzzy``)."""
        wire: dict[str, Any] = {"hwpt": self.kid(hwpt), "page": page, "npages": npages,
                                "shape": shape, "no_clear": no_clear}  # fmt: skip
        if shape == "badflags":
            return self._p("dirty_bitmap", wire, "EOPNOTSUPP")
        target = self.typed(wire["hwpt"], "HWPT_PAGING")
        if target is None:
            return self._p("dirty_bitmap", wire, "ENOENT")
        if shape in ("zero", "unaligned"):
            return self._p("dirty_bitmap", wire, "EINVAL")
        if shape == "wrap":
            return self._p("dirty_bitmap", wire, "EOVERFLOW")
        if not target.dirty_ops:
            return self._p("dirty_bitmap", wire, "EOPNOTSUPP")
        # __iommu_read_and_clear_dirty walks the areas contiguous from ``page`` only
        # (iopt_for_each_contig_area): past a hole nothing is read or cleared, and the
        # walk's EINVAL is dropped (the fuzzer found the model's first guess, every mapped
        # page of the range, wrong)
        assert target.ioas is not None
        mapped = {p for a in target.ioas.areas for p in range(a[0], a[0] + a[1])}
        span: set[int] = set()
        while page + len(span) in mapped and len(span) < npages:
            span.add(page + len(span))
        fields = {}
        if not target.fuzzy:
            fields["bitmap"] = sum(1 << (p - page) for p in target.dirty & span)

        def commit(obs: dict[str, Any]) -> None:
            if not no_clear:
                target.dirty -= span

        return self._p("dirty_bitmap", wire, OK, commit, **fields)

    # PASID attachments of mock devices (IOMMU_TEST_OP_PASID_*) --------------------------

    def _op_pasid_attach(self, dev: int | None, pasid: int, pt: int | None) -> Prediction:
        """PASID_ATTACH (iommufd_device_attach with a PASID).  Order: the selftest object,
        the pt (iommufd_device_change_pt), the PASID slot (iommufd_hw_pagetable_attach:
        EBUSY), then iommufd_hwpt_pasid_compat (the HWPT and the device's IOMMU_NO_PASID
        HWPT allocated with IOMMU_HWPT_ALLOC_PASID), then iommu_attach_device_pasid (a
        PASID past max_pasids).  An IOAS gets an auto domain, never PASID-compatible: EINVAL."""
        wire = {"dev": self.kid(dev), "pasid": pasid, "pt": self.kid(pt)}
        device = self.typed(wire["dev"], "SELFTEST")
        if device is None:
            return self._p("pasid_attach", wire, "ENOENT")
        found = self.lookup(wire["pt"])
        if found is None:
            return self._p("pasid_attach", wire, "ENOENT")
        kind, obj = found
        if kind not in ("HWPT_PAGING", "HWPT_NESTED", "IOAS"):
            return self._p("pasid_attach", wire, "EINVAL")
        if pasid in device.pasids:
            return self._p("pasid_attach", wire, "EBUSY")
        if kind == "IOAS" or not obj.pasid_compat:
            return self._p("pasid_attach", wire, "EINVAL")
        if device.attached is not None and not device.attached.pasid_compat:
            return self._p("pasid_attach", wire, "EINVAL")
        if pasid >= self.max_pasids(device):
            return self._p("pasid_attach", wire, "EINVAL")

        def commit(obs: dict[str, Any]) -> None:
            device.pasids[pasid] = obj

        return self._p("pasid_attach", wire, OK, commit)

    @staticmethod
    def max_pasids(device: Obj) -> int:
        """dev_iommu_get_max_pasids: 1 << the "pasid-num-bits" property, which the mock
        sets to 0 without MOCK_FLAGS_DEVICE_PASID: such a device has max_pasids 1, not 0,
        so every PASID is refused (the fuzzer found the model's first guess, 0 and no
        check at all, wrong)."""
        return 1 << (MOCK_PASID_WIDTH if device.pasid_cap else 0)

    def _op_pasid_replace(self, dev: int | None, pasid: int, pt: int | None) -> Prediction:
        """PASID_REPLACE (iommufd_device_replace with a PASID): EINVAL unless the PASID is
        attached (iommufd_device_do_replace); the same HWPT is a no-op; then the compat
        check.  An IOAS: a new auto domain is added first (EADDRINUSE when an allowed range
        is in the way), then refused (EINVAL)."""
        wire = {"dev": self.kid(dev), "pasid": pasid, "pt": self.kid(pt)}
        device = self.typed(wire["dev"], "SELFTEST")
        if device is None:
            return self._p("pasid_replace", wire, "ENOENT")
        found = self.lookup(wire["pt"])
        if found is None:
            return self._p("pasid_replace", wire, "ENOENT")
        kind, obj = found
        if kind not in ("HWPT_PAGING", "HWPT_NESTED", "IOAS"):
            return self._p("pasid_replace", wire, "EINVAL")
        if kind == "IOAS":
            return self._p("pasid_replace", wire, "EADDRINUSE" if obj.allowed_outside else "EINVAL")
        old = device.pasids.get(pasid)
        if old is None:
            return self._p("pasid_replace", wire, "EINVAL")
        if old is obj:
            return self._p("pasid_replace", wire, OK)
        if not obj.pasid_compat:
            return self._p("pasid_replace", wire, "EINVAL")
        if device.attached is not None and not device.attached.pasid_compat:
            return self._p("pasid_replace", wire, "EINVAL")

        def commit(obs: dict[str, Any]) -> None:
            device.pasids[pasid] = obj

        return self._p("pasid_replace", wire, OK, commit)

    def _op_pasid_detach(self, dev: int | None, pasid: int) -> Prediction:
        """PASID_DETACH: succeeds whether or not the PASID is attached."""
        wire = {"dev": self.kid(dev), "pasid": pasid}
        device = self.typed(wire["dev"], "SELFTEST")
        if device is None:
            return self._p("pasid_detach", wire, "ENOENT")

        def commit(obs: dict[str, Any]) -> None:
            device.pasids.pop(pasid, None)

        return self._p("pasid_detach", wire, OK, commit)

    def _op_pasid_check(self, dev: int | None, pasid: int, hwpt: int | None = -1) -> Prediction:
        """PASID_CHECK_HWPT (iommufd_test_pasid_check_hwpt): the kernel's own view of the
        attachment.  ``hwpt`` -1 sends 0 (is it detached?); a non-HWPT ID is EINVAL
        (iommufd_get_hwpt), a missing one ENOENT; EINVAL when the domain differs."""
        wire = {"dev": self.kid(dev), "pasid": pasid, "hwpt": 0 if hwpt == -1 else self.kid(hwpt)}
        device = self.typed(wire["dev"], "SELFTEST")
        if device is None:
            return self._p("pasid_check", wire, "ENOENT")
        attached = device.pasids.get(pasid)
        if hwpt == -1:
            return self._p("pasid_check", wire, "EINVAL" if attached is not None else OK)
        found = self.lookup(wire["hwpt"])
        if found is None:
            return self._p("pasid_check", wire, "ENOENT")
        if found[0] not in ("HWPT_PAGING", "HWPT_NESTED") or found[1] is not attached:
            return self._p("pasid_check", wire, "EINVAL")
        return self._p("pasid_check", wire, OK)


def _overlaps(areas: list[tuple[int, int]], page: int, npages: int) -> bool:
    last = page + npages - 1
    return any(a[0] <= last and a[0] + a[1] - 1 >= page for a in areas)


def _covered(areas: list[tuple[int, int]], page: int, npages: int) -> bool:
    """Every page of the range lies in some area (the kernel walks contiguous areas)."""
    pages = {p for a in areas for p in range(a[0], a[0] + a[1])}
    return all(p in pages for p in range(page, page + npages))
