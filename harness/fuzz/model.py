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
}

#: HWPT_ALLOC user data variants: (data_type, data_len) as the guest sends them
DATA_KINDS = ("none", "valid", "short", "badtype")
#: invalidation entry variants
ENTRY_KINDS = ("one", "all", "badflags", "badid", "empty", "nolen")


@dataclass(eq=False)
class Obj:
    """One modelled kernel object (a mock device is one object with two IDs)."""

    handle: int
    kind: str
    kid: int
    alive: bool = True
    # IOAS: mapped areas as (first page, pages), one per map/copy call
    areas: list[tuple[int, int]] = field(default_factory=list)
    # HWPT_PAGING / HWPT_NESTED
    ioas: Obj | None = None
    nest_parent: bool = False
    auto: bool = False
    fault: Obj | None = None
    parent: Obj | None = None
    viommu: Obj | None = None
    # DEVICE: ``kid`` is the selftest object, ``idev`` the iommufd device
    idev: int = 0
    attached: Obj | None = None
    vdev: Obj | None = None
    mdev_viommu: Obj | None = None
    mdev_vdev_id: int = 0
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
                or any(n.parent is obj and n.viommu is None for n in self.live("HWPT_NESTED"))
                or any(v.hwpt is obj for v in self.live("VIOMMU"))
            )
        if obj.kind == "HWPT_NESTED":
            return any(d.attached is obj for d in devices)
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

    def _op_map(self, ioas: int | None, page: int, npages: int) -> Prediction:
        wire = {"ioas": self.kid(ioas), "page": page, "npages": npages}
        target = self.typed(wire["ioas"], "IOAS")
        if target is None:
            return self._p("map", wire, "ENOENT")
        if _overlaps(target.areas, page, npages):
            return self._p("map", wire, "EEXIST")

        def commit(obs: dict[str, Any]) -> None:
            target.areas.append((page, npages))

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
                target.areas.remove(area)

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
            target.areas.clear()

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
            target.areas.append((dst_page, npages))

        return self._p("copy", wire, OK, commit)

    # devices and attachment ------------------------------------------------------------

    def _attach_check(self, dev: Obj | None, pt: tuple[str, Obj] | None) -> str:
        """The errno of attaching a mock device to ``pt`` (OK when it attaches)."""
        if pt is None:
            return "ENOENT"
        kind, obj = pt
        if kind not in ("HWPT_PAGING", "HWPT_NESTED", "IOAS"):
            return "EINVAL"
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
        return self._new("HWPT_PAGING", observed, ioas=obj, auto=True)

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

    def _op_mock_device(self, pt: int | None) -> Prediction:
        wire = {"pt": self.kid(pt)}
        # MOCK_DOMAIN allocates its selftest object (finalized only on success: ENOENT
        # until then) and binds the device (finalized at once) before it looks up pt_id:
        # a pt_id naming the new device's own ID finds a device, not a page table
        _, idev = self.free_ids(2)
        if wire["pt"] == idev:
            return self._p("mock_device", wire, "EINVAL")
        found = self.lookup(wire["pt"])
        outcome = self._attach_check(None, found)
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
            dev = self._new("DEVICE", obs["stdev"], idev=obs["idev"])
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
    ) -> Prediction:
        """IOMMU_HWPT_ALLOC; ``fault`` -1 for none, else a fault handle (None: bogus)."""
        wire: dict[str, Any] = {
            "dev": self.kid(dev, "DEVICE"),
            "pt": self.kid(pt),
            "nest_parent": nest_parent,
            "data": data,
            "fault": -1 if fault == -1 else self.kid(fault),
        }
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
        if kind == "IOAS":
            if has_fault and nest_parent:
                return p("EOPNOTSUPP")
            if data == "badtype":
                return p("EOPNOTSUPP")
            if data == "short":
                return p("EINVAL")
            new_kind, attrs = "HWPT_PAGING", {"ioas": obj, "nest_parent": nest_parent}
        elif kind in ("HWPT_PAGING", "VIOMMU"):
            if nest_parent or data == "none":
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
        fault_obj = None
        if has_fault:
            fault_obj = self.typed(wire["fault"], "FAULT")
            if fault_obj is None:
                return p("ENOENT")

        def commit(obs: dict[str, Any]) -> None:
            self._new(new_kind, obs["id"], fault=fault_obj, **attrs)

        return p(OK, commit)

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


def _overlaps(areas: list[tuple[int, int]], page: int, npages: int) -> bool:
    last = page + npages - 1
    return any(a[0] <= last and a[0] + a[1] - 1 >= page for a in areas)


def _covered(areas: list[tuple[int, int]], page: int, npages: int) -> bool:
    """Every page of the range lies in some area (the kernel walks contiguous areas)."""
    pages = {p for a in areas for p in range(a[0], a[0] + a[1])}
    return all(p in pages for p in range(page, page + npages))
