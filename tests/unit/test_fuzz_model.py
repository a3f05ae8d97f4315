"""The fuzzer's model predicts hand-written sequences the way drivers/iommu/iommufd (7.3) answers.

No guest: each step's observation is what the 7.3 kernel returned for it in a guest (the
IDs a fresh /dev/iommu hands out, in order), fed to ``commit`` as the runner does.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.fuzz.model import BOGUS_ID, OK, Model, ModelError, Prediction

pytestmark = pytest.mark.tier0


class Driver:
    """Steps a model through predictions, committing each with a given observation."""

    def __init__(self) -> None:
        self.m = Model()
        self.next_id = 1

    def ids(self, n: int) -> list[int]:
        out = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        return out

    def do(self, op: str, **args: Any) -> Prediction:
        pred = self.m.predict(op, **args)
        obs: dict[str, Any] = {"outcome": pred.outcome, **pred.fields}
        if pred.outcome == OK:
            if op in ("ioas_alloc", "hwpt_alloc", "viommu_alloc", "vdevice_alloc",
                      "veventq_alloc", "fault_alloc"):  # fmt: skip
                obs["id"] = self.ids(1)[0]
            elif op == "mock_device":
                stdev, idev = self.ids(2)
                obs.update(stdev=stdev, idev=idev, hwpt=pred.fields.get("hwpt") or self.ids(1)[0])
            elif op == "replace" and "hwpt" not in pred.fields:
                obs["hwpt"] = self.ids(1)[0]
            elif op == "replace":
                obs["hwpt"] = pred.fields["hwpt"]
        if pred.commit is not None:
            pred.commit(obs)
        return pred

    def last(self) -> int:
        return self.m._next - 1


def base() -> tuple[Driver, int]:
    """An IOAS and a mock device attached to it (through an auto domain)."""
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    d.do("mock_device", pt=ioas)
    return d, ioas


def device(d: Driver) -> int:
    return next(h for h in d.m.handles("DEVICE", alive=True))


def test_map_unmap_copy_areas() -> None:
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    assert d.do("map", ioas=ioas, page=0, npages=2).outcome == OK
    assert d.do("map", ioas=ioas, page=1, npages=1).outcome == "EEXIST"
    assert d.do("unmap", ioas=ioas, page=1, npages=1).outcome == "ENOENT"  # straddles
    assert d.do("copy", dst=ioas, src=ioas, src_page=0, dst_page=4, npages=2).outcome == OK
    assert d.do("copy", dst=ioas, src=ioas, src_page=2, dst_page=8, npages=1).outcome == "ENOENT"
    pred = d.do("unmap_all", ioas=ioas)
    assert (pred.outcome, pred.fields) == (OK, {"unmapped": 4})
    assert d.do("unmap", ioas=ioas, page=0, npages=1).outcome == "ENOENT"


def test_unmap_stops_at_a_straddling_area() -> None:
    """The kernel unmaps contained areas in IOVA order until one straddles the range."""
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    d.do("map", ioas=ioas, page=0, npages=1)
    d.do("map", ioas=ioas, page=1, npages=2)
    assert d.do("unmap", ioas=ioas, page=0, npages=2).outcome == "ENOENT"
    assert d.m.objs[ioas].areas == [(1, 2)]


def test_auto_domain_is_shared_and_freed() -> None:
    d, ioas = base()
    dev = device(d)
    auto = d.m.objs[dev].attached
    assert auto is not None and auto.auto
    pred = d.m.predict("mock_device", pt=ioas)
    assert pred.fields == {"hwpt": auto.kid}  # a second device shares the auto domain
    assert d.do("destroy", target=ioas).outcome == "EBUSY"
    assert d.do("destroy", target=auto.handle).outcome == "EBUSY"
    assert d.do("destroy", target=dev).outcome == OK  # the selftest object: unbinds
    assert not auto.alive
    assert d.do("destroy", target=ioas).outcome == OK


def test_device_id_is_held_by_the_driver() -> None:
    d, _ = base()
    assert d.do("destroy", target=device(d), role="DEVICE").outcome == "EBUSY"


def test_nesting_holds_and_errnos() -> None:
    d, ioas = base()
    dev = device(d)
    assert d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True).outcome == OK
    parent = d.last()
    assert d.do("hwpt_alloc", dev=dev, pt=ioas).outcome == OK
    plain = d.last()
    assert d.do("hwpt_alloc", dev=dev, pt=plain, data="valid").outcome == "EINVAL"
    assert d.do("hwpt_alloc", dev=dev, pt=parent, data="none").outcome == "EOPNOTSUPP"
    assert d.do("hwpt_alloc", dev=dev, pt=parent, data="short").outcome == "EINVAL"
    assert d.do("hwpt_alloc", dev=dev, pt=parent, data="badtype").outcome == "EOPNOTSUPP"
    assert d.do("hwpt_alloc", dev=dev, pt=None).outcome == "EINVAL"  # pt_id: EINVAL
    assert d.do("hwpt_alloc", dev=None, pt=ioas).outcome == "ENOENT"
    assert d.do("viommu_alloc", dev=dev, hwpt=plain).outcome == "EINVAL"
    assert d.do("viommu_alloc", dev=dev, hwpt=ioas).outcome == "ENOENT"
    assert d.do("viommu_alloc", dev=dev, hwpt=parent).outcome == OK
    viommu = d.last()
    assert d.do("hwpt_alloc", dev=dev, pt=viommu, data="valid").outcome == OK
    vnested = d.last()
    # attaching a vIOMMU-based nested HWPT needs the device's vDEVICE on that vIOMMU
    assert d.do("replace", dev=dev, pt=vnested).outcome == "ENOENT"
    assert d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=2).outcome == OK
    assert d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=3).outcome == "EEXIST"
    assert d.do("replace", dev=dev, pt=vnested).outcome == OK
    assert d.do("destroy", target=vnested).outcome == "EBUSY"
    assert d.do("destroy", target=viommu).outcome == "EBUSY"
    assert d.do("destroy", target=parent).outcome == "EBUSY"
    assert d.do("replace", dev=dev, pt=viommu).outcome == "EINVAL"  # not a page table


def test_vevents_sequence_and_lost() -> None:
    d, ioas = base()
    dev = device(d)
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True)
    d.do("viommu_alloc", dev=dev, hwpt=d.last())
    viommu = d.last()
    d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=1)
    d.do("hwpt_alloc", dev=dev, pt=viommu, data="valid")
    d.do("replace", dev=dev, pt=d.last())
    assert d.do("trigger_vevent", dev=dev).outcome == "EOPNOTSUPP"  # no vEVENTQ yet
    assert d.do("veventq_alloc", viommu=viommu, depth=0).outcome == "EINVAL"
    assert d.do("veventq_alloc", viommu=viommu, depth=2).outcome == OK
    queue = d.last()
    assert d.do("veventq_alloc", viommu=viommu, depth=2).outcome == "EEXIST"
    for _ in range(4):
        assert d.do("trigger_vevent", dev=dev).outcome == OK
    pred = d.do("read_vevents", queue=queue)
    assert pred.fields == {"records": [["event", 0], ["event", 1], ["lost", 3]]}
    assert d.do("destroy", target=queue).outcome == "EBUSY"  # its fd holds it
    assert d.do("close_fd", queue=queue).outcome == OK
    assert d.do("read_vevents", queue=queue).outcome == "EBADF"
    assert d.do("destroy", target=queue).outcome == OK
    assert d.m.open_queue_fds() == 0


def test_virt_id_zero_reports_no_vevent() -> None:
    """The mock treats vdev_id 0 as 'no vDEVICE' (iommufd_test_trigger_vevent)."""
    d, ioas = base()
    dev = device(d)
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True)
    d.do("viommu_alloc", dev=dev, hwpt=d.last())
    viommu = d.last()
    d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=0)
    d.do("veventq_alloc", viommu=viommu, depth=1)
    d.do("hwpt_alloc", dev=dev, pt=viommu, data="valid")
    d.do("replace", dev=dev, pt=d.last())
    assert d.do("trigger_vevent", dev=dev).outcome == "ENOENT"


def test_destroyed_device_tombstones_its_vdevice() -> None:
    d, ioas = base()
    dev = device(d)
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True)
    d.do("viommu_alloc", dev=dev, hwpt=d.last())
    viommu = d.last()
    d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=1)
    vdev = d.last()
    kid = d.m.objs[vdev].kid
    assert d.do("destroy", target=dev).outcome == OK
    assert kid in d.m.tombstones
    assert d.do("destroy", target=vdev).outcome == "ENOENT"
    assert d.do("destroy", target=viommu).outcome == OK


def test_invalidation_order_and_layouts() -> None:
    d, ioas = base()
    dev = device(d)
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True)
    parent = d.last()
    d.do("hwpt_alloc", dev=dev, pt=parent, data="valid")
    nested = d.last()

    def inv(target: int | None, data_type: str, entry: str, **kw: Any) -> tuple[str, Any]:
        pred = d.do("invalidate", target=target, data_type=data_type, entry=entry, **kw)
        return pred.outcome, pred.fields["done"]

    assert inv(None, "hwpt", "nolen") == ("EINVAL", 0)  # the array is checked before the ID
    assert inv(None, "hwpt", "one") == ("ENOENT", 0)
    assert inv(parent, "hwpt", "one") == ("EINVAL", 0)
    assert inv(nested, "hwpt", "one", index=3) == (OK, 1)
    assert inv(nested, "hwpt", "badflags") == ("EOPNOTSUPP", 0)
    assert inv(nested, "hwpt", "badid") == ("EINVAL", 0)
    assert inv(nested, "badtype", "one") == ("EINVAL", 0)
    assert inv(nested, "hwpt", "empty") == (OK, 0)
    # a vIOMMU-layout entry (12 bytes) on a nested HWPT: longer than sizeof, EINVAL even
    # when the extra bytes are zero (found by the fuzzer: the model expected success)
    assert inv(nested, "viommu", "one", index=1) == ("EINVAL", 0)
    assert inv(nested, "viommu", "one", index=0, virt_id=2) == ("EINVAL", 0)
    d.do("viommu_alloc", dev=dev, hwpt=parent)
    viommu = d.last()
    d.do("vdevice_alloc", viommu=viommu, dev=dev, virt_id=2)
    assert inv(viommu, "viommu", "one", virt_id=2) == (OK, 1)
    assert inv(viommu, "viommu", "one", virt_id=3) == ("EINVAL", 0)
    assert inv(viommu, "viommu", "badid", virt_id=2) == ("EINVAL", 0)
    assert inv(viommu, "viommu", "badflags", virt_id=3) == ("EOPNOTSUPP", 0)
    # an IOTLB-layout entry on a vIOMMU is zero-extended: its iotlb_id becomes the vdev_id
    assert inv(viommu, "hwpt", "one", index=2) == (OK, 1)
    assert inv(viommu, "hwpt", "one", index=1) == ("EINVAL", 0)
    assert inv(viommu, "viommu", "empty") == (OK, 0)
    assert inv(viommu, "badtype", "empty") == ("EINVAL", 0)


def test_faults_reach_the_queue_of_the_attached_hwpt_only() -> None:
    d, ioas = base()
    dev = device(d)
    d.do("fault_alloc")
    fault = d.last()
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True, fault=fault)
    assert d.m.predict("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True, fault=fault).outcome == (
        "EOPNOTSUPP"
    )
    d.do("hwpt_alloc", dev=dev, pt=ioas, fault=fault)
    iopf = d.last()
    d.do("trigger_iopf", dev=dev)  # attached to the auto domain: nothing queued
    d.do("replace", dev=dev, pt=iopf)
    d.do("trigger_iopf", dev=dev)
    d.do("trigger_iopf", dev=dev)
    assert d.do("read_faults", queue=fault).fields == {"records": 2}
    d.do("trigger_iopf", dev=dev)
    d.do("replace", dev=dev, pt=ioas)  # leaving the HWPT answers its pending faults
    assert d.do("read_faults", queue=fault).fields == {"records": 0}
    assert d.do("destroy", target=fault).outcome == "EBUSY"


def test_bogus_and_stale_ids() -> None:
    d, _ = base()
    assert d.m.kid(None) == BOGUS_ID
    for op, args in (
        ("map", {"ioas": None, "page": 0, "npages": 1}),
        ("destroy", {"target": None}),
        ("mock_device", {"pt": None}),
        ("trigger_iopf", {"dev": None}),
        ("veventq_alloc", {"viommu": None, "depth": 1}),
    ):
        assert d.m.predict(op, **args).outcome == "ENOENT", op
    d.do("ioas_alloc")
    other = d.last()
    d.do("destroy", target=other)
    assert d.do("map", ioas=other, page=0, npages=1).outcome == "ENOENT"


def test_an_id_clash_is_a_model_error() -> None:
    d = Driver()
    d.do("ioas_alloc")
    pred = d.m.predict("ioas_alloc")
    assert pred.commit is not None
    with pytest.raises(ModelError):
        pred.commit({"outcome": OK, "id": d.m.objs[0].kid})


def test_mismatch_names_the_field() -> None:
    d = Driver()
    d.do("ioas_alloc")
    pred = d.m.predict("unmap_all", ioas=0)
    assert pred.mismatch({"outcome": OK, "unmapped": 0}) is None
    assert pred.mismatch({"outcome": OK, "unmapped": 1}) == "unmapped: expected 0, got 1"
    assert pred.mismatch({"outcome": "EINVAL"}) == "outcome: expected ok, got EINVAL"


def test_mock_domain_onto_its_own_new_device_id() -> None:
    """Found by the fuzzer: MOCK_DOMAIN binds the new device before it looks up pt_id, so
    a pt_id equal to the device ID it is about to get names a device (EINVAL)."""
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    assert d.m.free_ids(2) == [2, 3]
    stale = d.m.handles()[0]
    d.m.objs[stale].kid = 3  # a stale handle whose ID is the next device's
    pred = d.m.predict("mock_device", pt=stale)
    assert (pred.wire["args"], pred.outcome) == ({"pt": 3}, "EINVAL")
    d.m.objs[stale].kid = 1
    assert d.m.predict("mock_device", pt=ioas).outcome == OK


# --- IOMMU_OPTION, GET_HW_INFO, IOVA ranges, dirty tracking --------------------------


def test_option_rlimit_mode_and_huge_pages() -> None:
    d = Driver()
    rlimit = {"option": "rlimit", "target": -1}
    assert d.do("option", action="get", **rlimit).fields == {"value": 0}  # ACCOUNT_NONE
    assert d.do("option", action="set", value=2, **rlimit).outcome == "EINVAL"
    assert d.do("option", action="set", value=1, **rlimit).outcome == OK
    assert d.do("option", action="get", **rlimit).fields == {"value": 1}
    assert d.do("option", action="bad", **rlimit).outcome == "EOPNOTSUPP"
    assert d.do("option", option="bogus", action="get").outcome == "EOPNOTSUPP"
    d.do("ioas_alloc")
    ioas = d.last()
    # object_id is refused before op; SET needs an empty object table
    assert d.do("option", option="rlimit", action="get", target=ioas).outcome == "EOPNOTSUPP"
    assert d.do("option", action="set", value=0, **rlimit).outcome == "EBUSY"
    huge = {"option": "huge", "target": ioas}
    assert d.do("option", action="get", **huge).fields == {"value": 1}
    assert d.do("option", option="huge", action="get", target=-1).outcome == "ENOENT"
    assert d.do("option", option="huge", action="bad", target=None).outcome == "ENOENT"
    assert d.do("option", action="bad", **huge).outcome == "EOPNOTSUPP"
    assert d.do("option", action="set", value=2, **huge).outcome == "EINVAL"
    d.do("mock_device", pt=ioas)  # a domain, no pages yet: large pages can go
    assert d.do("option", action="set", value=0, **huge).outcome == OK
    assert d.do("option", action="get", **huge).fields == {"value": 0}
    assert d.do("option", action="set", value=1, **huge).outcome == OK
    d.do("map", ioas=ioas, page=0, npages=1)
    assert d.do("option", action="set", value=0, **huge).outcome == "EINVAL"  # pages mapped
    d.do("unmap_all", ioas=ioas)
    assert d.do("option", action="set", value=0, **huge).outcome == OK


def test_hw_info_of_mock_devices() -> None:
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    devs = {}
    for flags in ("", "nodirty", "pasid"):
        d.do("mock_device", pt=ioas, flags=flags)
        devs[flags] = d.m.handles("DEVICE")[-1]
    pred = d.do("hw_info", dev=devs[""], data_type="selftest")
    assert pred.outcome == OK and pred.wire["args"]["dev"] == d.m.objs[devs[""]].idev
    assert pred.fields == {"type": 0xFEEDBEEF, "length": 8, "test_reg": 0xDEADBEEF,
                           "capabilities": 1 | 8, "max_pasid_log2": 0}  # fmt: skip
    assert d.do("hw_info", dev=devs["nodirty"]).fields["capabilities"] == 8
    assert d.do("hw_info", dev=devs["pasid"], data_type="default").fields["max_pasid_log2"] == 20
    assert d.do("hw_info", dev=devs[""], data_type="vtd").outcome == "EOPNOTSUPP"
    assert d.do("hw_info", dev=None, data_type="vtd").outcome == "ENOENT"  # device first
    assert d.do("hw_info", dev=ioas).outcome == "ENOENT"


def test_iova_ranges_and_allowed_ranges_against_domains() -> None:
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    pred = d.do("iova_ranges", ioas=ioas)
    assert pred.fields == {"ranges": [[0, (1 << 64) - 1]], "alignment": 1}
    assert d.do("iova_ranges", ioas=ioas, capacity=0).outcome == "EMSGSIZE"
    assert d.do("iova_ranges", ioas=None).outcome == "ENOENT"
    assert d.do("allow_iovas", ioas=ioas, kind="inverted").outcome == "EINVAL"
    assert d.do("allow_iovas", ioas=ioas, kind="overlap").outcome == "EINVAL"
    assert d.do("allow_iovas", ioas=None, kind="overlap").outcome == "ENOENT"
    assert d.do("allow_iovas", ioas=ioas, kind="outside").outcome == OK  # no domain yet
    # a new domain reserves what lies outside its aperture: the allowed range is in the way
    assert d.do("mock_device", pt=ioas).outcome == "EADDRINUSE"
    assert d.do("allow_iovas", ioas=ioas, kind="inside").outcome == OK
    assert d.do("mock_device", pt=ioas).outcome == OK
    dev = device(d)
    pred = d.do("iova_ranges", ioas=ioas)
    assert pred.fields == {"ranges": [[1 << 24, (1 << 31) - 1]], "alignment": 2048}
    assert d.do("allow_iovas", ioas=ioas, kind="outside").outcome == "EADDRINUSE"
    d.do("ioas_alloc")
    other = d.last()
    assert d.do("allow_iovas", ioas=other, kind="outside").outcome == OK
    assert d.do("hwpt_alloc", dev=dev, pt=other).outcome == "EADDRINUSE"
    assert d.do("replace", dev=dev, pt=other).outcome == "EADDRINUSE"
    assert d.do("hwpt_alloc", dev=dev, pt=other, data="short").outcome == "EINVAL"  # data first
    assert d.do("option", option="huge", action="set", target=other).outcome == OK
    assert d.do("iova_ranges", ioas=other).fields["alignment"] == 4096


def dirty_setup(huge: bool = False) -> tuple[Driver, int, int]:
    """An IOAS (large pages off unless ``huge``), a device, and a dirty-tracking HWPT."""
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    if not huge:
        d.do("option", option="huge", action="set", target=ioas, value=0)
    d.do("mock_device", pt=ioas)
    assert d.do("hwpt_alloc", dev=device(d), pt=ioas, dirty=True).outcome == OK
    return d, ioas, d.last()


def test_dirty_tracking_alloc_and_attach() -> None:
    d, ioas, hwpt = dirty_setup()
    dev = device(d)
    assert d.m.objs[hwpt].dirty_ops
    # nested HWPTs take no DIRTY_TRACKING (only FAULT_ID_VALID / PASID flags)
    d.do("hwpt_alloc", dev=dev, pt=ioas, nest_parent=True, dirty=True)
    parent = d.last()
    assert d.do("hwpt_alloc", dev=dev, pt=parent, data="valid", dirty=True).outcome == "EOPNOTSUPP"
    d.do("mock_device", pt=ioas, flags="nodirty")
    nodirty = d.m.handles("DEVICE")[-1]
    assert d.do("hwpt_alloc", dev=nodirty, pt=ioas, dirty=True).outcome == "EOPNOTSUPP"
    assert d.do("replace", dev=nodirty, pt=hwpt).outcome == "EINVAL"
    assert d.do("mock_device", pt=hwpt, flags="nodirty").outcome == "EINVAL"
    assert d.do("replace", dev=dev, pt=hwpt).outcome == OK
    assert d.do("destroy", target=hwpt).outcome == "EBUSY"


def test_dirty_tracking_errnos_in_handler_order() -> None:
    d, ioas, hwpt = dirty_setup()
    auto = next(h.handle for h in d.m.live("HWPT_PAGING") if h.auto)
    sdt = "set_dirty_tracking"
    assert d.do(sdt, hwpt=None, enable=True, badflags=True).outcome == "EOPNOTSUPP"  # flags 1st
    assert d.do(sdt, hwpt=ioas, enable=True).outcome == "ENOENT"
    assert d.do(sdt, hwpt=auto, enable=False).outcome == "EOPNOTSUPP"  # no dirty ops
    assert d.do("mark_dirty", hwpt=hwpt, page=0, npages=1, mask=1).outcome == "EINVAL"  # off
    assert d.do("mark_dirty", hwpt=ioas, page=0, npages=1, mask=1).outcome == "ENOENT"
    bitmap = {"page": 0, "npages": 4}
    assert d.do("dirty_bitmap", hwpt=None, shape="badflags", **bitmap).outcome == "EOPNOTSUPP"
    assert d.do("dirty_bitmap", hwpt=None, shape="zero", **bitmap).outcome == "ENOENT"
    assert d.do("dirty_bitmap", hwpt=auto, shape="zero", **bitmap).outcome == "EINVAL"  # range
    assert d.do("dirty_bitmap", hwpt=auto, shape="unaligned", **bitmap).outcome == "EINVAL"
    assert d.do("dirty_bitmap", hwpt=auto, shape="wrap", **bitmap).outcome == "EOVERFLOW"
    assert d.do("dirty_bitmap", hwpt=auto, **bitmap).outcome == "EOPNOTSUPP"  # then ops
    assert d.do("dirty_bitmap", hwpt=hwpt, **bitmap).fields == {"bitmap": 0}


def test_dirty_bitmap_reads_the_mapped_run_and_clears_it() -> None:
    d, ioas, hwpt = dirty_setup()
    d.do("map", ioas=ioas, page=0, npages=2)
    d.do("map", ioas=ioas, page=3, npages=2)
    assert d.do("set_dirty_tracking", hwpt=hwpt, enable=True).outcome == OK
    # pages 0-5 marked; 2 and 5 are not mapped (they count, but mark nothing)
    assert d.do("mark_dirty", hwpt=hwpt, page=0, npages=6, mask=0b111111).fields == {"count": 6}
    # the walk stops at the hole at page 2: pages 3-4 stay unread (and dirty)
    assert d.do("dirty_bitmap", hwpt=hwpt, page=0, npages=8, no_clear=True).fields == {
        "bitmap": 0b11
    }
    assert d.do("dirty_bitmap", hwpt=hwpt, page=1, npages=1).fields == {"bitmap": 1}
    assert d.do("dirty_bitmap", hwpt=hwpt, page=0, npages=2).fields == {"bitmap": 0b01}
    assert d.do("dirty_bitmap", hwpt=hwpt, page=0, npages=2).fields == {"bitmap": 0}  # cleared
    pred = d.do("dirty_bitmap", hwpt=hwpt, page=3, npages=4, no_clear=True)
    assert pred.fields == {"bitmap": 0b11}  # 3-4 mapped, 5 not: the run ends there
    assert d.do("set_dirty_tracking", hwpt=hwpt, enable=False).outcome == OK
    assert d.do("dirty_bitmap", hwpt=hwpt, page=3, npages=2, no_clear=True).fields == {
        "bitmap": 0b11
    }  # disabling keeps the bits; enabling clears them
    d.do("set_dirty_tracking", hwpt=hwpt, enable=True)
    assert d.do("dirty_bitmap", hwpt=hwpt, page=3, npages=2).fields == {"bitmap": 0}
    d.do("mark_dirty", hwpt=hwpt, page=3, npages=1, mask=1)
    d.do("unmap", ioas=ioas, page=3, npages=2)  # unmapped pages lose their dirty bits
    d.do("map", ioas=ioas, page=3, npages=1)
    assert d.do("dirty_bitmap", hwpt=hwpt, page=3, npages=1).fields == {"bitmap": 0}


def test_dirty_marks_on_large_page_areas_are_not_predicted() -> None:
    """With large pages allowed one entry may span pages (a physically contiguous buffer):
    the bitmap of a range it hit is not predicted until enabling clears everything."""
    d, ioas, hwpt = dirty_setup(huge=True)
    d.do("map", ioas=ioas, page=0, npages=2)  # may be one 8k entry
    d.do("map", ioas=ioas, page=4, npages=1)  # one page: exact
    d.do("set_dirty_tracking", hwpt=hwpt, enable=True)
    d.do("mark_dirty", hwpt=hwpt, page=4, npages=1, mask=1)
    assert d.do("dirty_bitmap", hwpt=hwpt, page=4, npages=1).fields == {"bitmap": 1}
    d.do("mark_dirty", hwpt=hwpt, page=0, npages=1, mask=1)
    pred = d.do("dirty_bitmap", hwpt=hwpt, page=0, npages=2)
    assert pred.outcome == OK and "bitmap" not in pred.fields
    d.do("set_dirty_tracking", hwpt=hwpt, enable=True)
    assert d.do("dirty_bitmap", hwpt=hwpt, page=0, npages=2).fields == {"bitmap": 0}


def pasid_setup() -> tuple[Driver, int, int, int, int]:
    """An IOAS, a plain device, two PASID-compatible HWPTs and a PASID device on the first."""
    d = Driver()
    d.do("ioas_alloc")
    ioas = d.last()
    d.do("mock_device", pt=ioas)
    plain = device(d)
    d.do("hwpt_alloc", dev=plain, pt=ioas, pasid=True)
    first = d.last()
    d.do("hwpt_alloc", dev=plain, pt=ioas, pasid=True)
    second = d.last()
    assert d.do("mock_device", pt=first, flags="pasid").outcome == OK
    return d, ioas, first, second, d.m.handles("DEVICE")[-1]


def test_pasid_attach_errnos_in_handler_order() -> None:
    d, ioas, first, second, dev = pasid_setup()
    plain = d.m.handles("DEVICE")[0]
    d.do("hwpt_alloc", dev=plain, pt=ioas)
    not_compat = d.last()
    att = "pasid_attach"
    assert d.do(att, dev=None, pasid=1, pt=second).outcome == "ENOENT"  # selftest obj first
    assert d.do(att, dev=dev, pasid=1, pt=None).outcome == "ENOENT"
    assert d.do(att, dev=dev, pasid=1, pt=ioas).outcome == "EINVAL"  # auto domain: no PASID
    assert d.do(att, dev=dev, pasid=1, pt=not_compat).outcome == "EINVAL"
    assert d.do(att, dev=dev, pasid=1 << 20, pt=second).outcome == "EINVAL"  # >= max_pasids
    # a device without MOCK_FLAGS_DEVICE_PASID has max_pasids 1 ("pasid-num-bits" 0)
    d.do("replace", dev=plain, pt=first)
    assert d.do(att, dev=plain, pasid=1, pt=second).outcome == "EINVAL"
    assert d.do(att, dev=dev, pasid=1, pt=second).outcome == OK
    assert d.do(att, dev=dev, pasid=1, pt=first).outcome == "EBUSY"  # slot taken, before compat
    assert d.do(att, dev=dev, pasid=1, pt=not_compat).outcome == "EBUSY"
    assert d.do("pasid_check", dev=dev, pasid=1, hwpt=second).outcome == OK
    assert d.do("pasid_check", dev=dev, pasid=1, hwpt=first).outcome == "EINVAL"
    assert d.do("pasid_check", dev=dev, pasid=1).outcome == "EINVAL"  # not detached
    assert d.do("pasid_check", dev=dev, pasid=2).outcome == OK
    assert d.do("pasid_check", dev=dev, pasid=1, hwpt=ioas).outcome == "EINVAL"  # not a HWPT
    assert d.do("pasid_check", dev=dev, pasid=1, hwpt=None).outcome == "ENOENT"


def test_pasid_attachment_holds_its_hwpt_and_the_rid_domain() -> None:
    d, ioas, first, second, dev = pasid_setup()
    plain = d.m.handles("DEVICE")[0]
    d.do("hwpt_alloc", dev=plain, pt=ioas)
    not_compat = d.last()
    d.do("pasid_attach", dev=dev, pasid=2, pt=second)
    assert d.do("destroy", target=second).outcome == "EBUSY"  # held by the PASID
    # the RID (IOMMU_NO_PASID) may not move to a non-PASID-compatible HWPT or an IOAS now
    assert d.do("replace", dev=dev, pt=not_compat).outcome == "EINVAL"
    assert d.do("replace", dev=dev, pt=ioas).outcome == "EINVAL"
    assert d.do("replace", dev=dev, pt=first).outcome == OK  # where it is: a no-op
    assert d.do("replace", dev=dev, pt=second).outcome == OK
    rep = "pasid_replace"
    assert d.do(rep, dev=dev, pasid=1, pt=first).outcome == "EINVAL"  # PASID 1 not attached
    assert d.do(rep, dev=dev, pasid=2, pt=not_compat).outcome == "EINVAL"
    assert d.do(rep, dev=dev, pasid=2, pt=ioas).outcome == "EINVAL"
    assert d.do(rep, dev=dev, pasid=2, pt=second).outcome == OK  # the same HWPT
    assert d.do(rep, dev=dev, pasid=2, pt=first).outcome == OK
    d.do("replace", dev=dev, pt=first)
    assert d.do("destroy", target=second).outcome == OK  # nothing holds it now
    assert d.do("destroy", target=first).outcome == "EBUSY"
    assert d.do("pasid_detach", dev=dev, pasid=2).outcome == OK
    assert d.do("pasid_detach", dev=dev, pasid=2).outcome == OK  # detached already: still ok
    assert d.do("pasid_detach", dev=None, pasid=2).outcome == "ENOENT"
    d.do("replace", dev=dev, pt=not_compat)
    assert d.do("destroy", target=first).outcome == OK


def test_pasid_replace_to_an_ioas_adds_a_domain_first() -> None:
    d, _, _, second, dev = pasid_setup()
    d.do("pasid_attach", dev=dev, pasid=1, pt=second)
    d.do("ioas_alloc")
    other = d.last()
    d.do("allow_iovas", ioas=other, kind="outside")
    assert d.do("pasid_replace", dev=dev, pasid=1, pt=other).outcome == "EADDRINUSE"


def test_a_destroyed_device_keeps_its_pasid_holds() -> None:
    """The mock's destroy detaches IOMMU_NO_PASID only (iommufd_selftest_destroy): the
    model keeps the PASID's hold on its HWPT."""
    d, _, _, second, dev = pasid_setup()
    d.do("pasid_attach", dev=dev, pasid=1, pt=second)
    assert d.do("destroy", target=dev).outcome == OK
    assert d.do("destroy", target=second).outcome == "EBUSY"


def test_the_vfio_compat_ioas_is_set_got_cleared_and_forgotten_on_destroy() -> None:
    """iommufd_vfio_ioas: GET is ENODEV until SET names an IOAS; SET of a non-IOAS is
    ENOENT; destroying the compat IOAS clears it (iommufd_object_remove)."""
    m = Model()
    assert m.predict("vfio_ioas", action="get").outcome == "ENODEV"
    assert m.predict("vfio_ioas", action="set", ioas=None).outcome == "ENOENT"
    assert m.predict("vfio_ioas", action="bad").outcome == "EOPNOTSUPP"
    m.predict("ioas_alloc").settle({"outcome": "ok", "id": 1})
    assert m.predict("vfio_ioas", action="set", ioas=0).settle({"outcome": "ok"}) is None
    assert m.predict("vfio_ioas", action="get").fields == {"ioas": 1}
    m.predict("destroy", target=0).settle({"outcome": "ok"})
    assert m.predict("vfio_ioas", action="get").outcome == "ENODEV"
