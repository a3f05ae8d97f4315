"""The kernel's iommufd selftest mock (CONFIG_IOMMUFD_TEST), driven through IOMMU_TEST_CMD.

``Selftest(ictx)`` issues the IOMMU_TEST_OP_* operations the way
tools/testing/selftests/iommu/iommufd_utils.h does: ``mock_domain`` creates a mock
device bound and attached to a page table (a ``MockDevice``, destroyed like any object),
``check_iotlb`` / ``check_dev_cache`` ask the mock whether an IOTLB or device-cache entry
holds a value (the kernel answers EINVAL when it does not), ``trigger_iopf`` /
``trigger_vevent`` inject a page fault / a vEVENT.  Errors name the op, e.g.
``IOMMU_TEST_CMD(MD_CHECK_IOTLB)``.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from harness.driver.errors import IoctlError, issues
from harness.driver.iommufd import IommuFD
from harness.driver.objects import RANK_DEVICE, HasDevId, HasId, IommufdObject, dev_id, obj_id
from harness.uapi import iommufd as uapi
from harness.uapi import iommufd_test as t

_TEST_CMD = ctypes.sizeof(t.iommu_test_cmd)

OP_NAMES = {
    value: name.removeprefix("IOMMU_TEST_OP_")
    for name, value in vars(t).items()
    if name.startswith("IOMMU_TEST_OP_") and isinstance(value, int)
}


def op_label(op: int) -> str:
    """``IOMMU_TEST_CMD(MD_CHECK_IOTLB)`` for op 14."""
    return f"IOMMU_TEST_CMD({OP_NAMES.get(op, op)})"


class MockDevice(IommufdObject):
    """A mock device (IOMMUFD_OBJ_SELFTEST): ``id`` is its stdev ID, ``dev_id`` its idev ID."""

    rank = RANK_DEVICE
    kind = "SELFTEST"

    def __init__(self, st: Selftest, stdev_id: int, hwpt_id: int, idev_id: int) -> None:
        super().__init__(st.ictx, stdev_id)
        self.st = st
        self.dev_id = idev_id
        #: the page table the device is attached to (the auto domain after MOCK_DOMAIN)
        self.hwpt_id = hwpt_id

    @property
    def stdev_id(self) -> int:
        return self.id

    @issues("IOMMU_TEST_CMD(MOCK_DOMAIN_REPLACE)")
    def replace(self, pt: int | HasId) -> int:
        """Re-attach to ``pt`` (an IOAS or a HWPT); returns the HWPT now attached."""
        cmd = self.st.cmd(t.IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.id)
        cmd.mock_domain_replace.pt_id = obj_id(pt)
        self.st.call(cmd)
        self.hwpt_id = int(cmd.mock_domain_replace.pt_id)
        return self.hwpt_id

    @issues("IOMMU_TEST_CMD(PASID_ATTACH)")
    def pasid_attach(self, pasid: int, pt: int | HasId) -> None:
        cmd = self.st.cmd(t.IOMMU_TEST_OP_PASID_ATTACH, self.id)
        cmd.pasid_attach.pasid = pasid
        cmd.pasid_attach.pt_id = obj_id(pt)
        self.st.call(cmd)

    @issues("IOMMU_TEST_CMD(PASID_REPLACE)")
    def pasid_replace(self, pasid: int, pt: int | HasId) -> None:
        cmd = self.st.cmd(t.IOMMU_TEST_OP_PASID_REPLACE, self.id)
        cmd.pasid_replace.pasid = pasid
        cmd.pasid_replace.pt_id = obj_id(pt)
        self.st.call(cmd)

    @issues("IOMMU_TEST_CMD(PASID_DETACH)")
    def pasid_detach(self, pasid: int) -> None:
        cmd = self.st.cmd(t.IOMMU_TEST_OP_PASID_DETACH, self.id)
        cmd.pasid_detach.pasid = pasid
        self.st.call(cmd)

    @issues("IOMMU_TEST_CMD(PASID_CHECK_HWPT)")
    def pasid_check(self, pasid: int, hwpt: int | HasId) -> None:
        """Succeeds when ``pasid`` is attached to ``hwpt`` (0: not attached)."""
        cmd = self.st.cmd(t.IOMMU_TEST_OP_PASID_CHECK_HWPT, self.id)
        cmd.pasid_check.pasid = pasid
        cmd.pasid_check.hwpt_id = obj_id(hwpt)
        self.st.call(cmd)

    def pasid_is(self, pasid: int, hwpt: int | HasId) -> bool:
        """Whether ``pasid`` is attached to ``hwpt`` (0: to nothing)."""
        try:
            self.pasid_check(pasid, hwpt)
        except IoctlError as err:
            if err.errno == errno.EINVAL:
                return False
            raise
        return True


class Selftest:
    """IOMMU_TEST_CMD operations on one ``IommuFD``."""

    def __init__(self, ictx: IommuFD) -> None:
        self.ictx = ictx

    @staticmethod
    def cmd(op: int, object_id: int = 0) -> t.iommu_test_cmd:
        """A zeroed iommu_test_cmd for ``op`` on ``object_id``."""
        return t.iommu_test_cmd(_TEST_CMD, op, object_id)

    def call(self, cmd: t.iommu_test_cmd) -> int:
        """Issue ``cmd``; errors are named ``IOMMU_TEST_CMD(<op>)``."""
        return self.ictx.chan.call(op_label(int(cmd.op)), t.IOMMU_TEST_CMD, cmd)

    @issues("IOMMU_TEST_CMD(MOCK_DOMAIN)")
    def mock_domain(self, pt: int | HasId, *, dev_flags: int = 0) -> MockDevice:
        """A mock device bound to this iommufd and attached to ``pt`` (IOAS or HWPT)."""
        if dev_flags:
            cmd = self.cmd(t.IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS, obj_id(pt))
            cmd.mock_domain_flags.dev_flags = dev_flags
        else:
            cmd = self.cmd(t.IOMMU_TEST_OP_MOCK_DOMAIN, obj_id(pt))
        self.call(cmd)
        out = cmd.mock_domain
        return MockDevice(self, int(out.out_stdev_id), int(out.out_hwpt_id), int(out.out_idev_id))

    @issues("IOMMU_TEST_CMD(ADD_RESERVED)")
    def add_reserved(self, ioas: int | HasId, start: int, length: int) -> None:
        cmd = self.cmd(t.IOMMU_TEST_OP_ADD_RESERVED, obj_id(ioas))
        cmd.add_reserved.start = start
        cmd.add_reserved.length = length
        self.call(cmd)

    @issues("IOMMU_TEST_CMD(SET_TEMP_MEMORY_LIMIT)")
    def set_temp_memory_limit(self, limit: int = 65536) -> None:
        """The mock's page-batch memory limit (65536 is the selftests' default)."""
        cmd = self.cmd(t.IOMMU_TEST_OP_SET_TEMP_MEMORY_LIMIT)
        cmd.memory_limit.limit = limit
        self.call(cmd)

    @issues("IOMMU_TEST_CMD(MD_CHECK_MAP)")
    def check_map(self, hwpt: int | HasId, iova: int, length: int, user_va: int) -> None:
        """Succeeds when the mock domain maps ``iova`` (``length`` bytes) to ``user_va``'s pages."""
        cmd = self.cmd(t.IOMMU_TEST_OP_MD_CHECK_MAP, obj_id(hwpt))
        cmd.check_map.iova = iova
        cmd.check_map.length = length
        cmd.check_map.uptr = user_va
        self.call(cmd)

    @issues("IOMMU_TEST_CMD(MD_CHECK_REFS)")
    def check_refs(self, user_va: int, length: int, refs: int) -> None:
        """Succeeds when each page at ``user_va`` is pinned ``refs`` times."""
        cmd = self.cmd(t.IOMMU_TEST_OP_MD_CHECK_REFS)
        cmd.check_refs.length = length
        cmd.check_refs.uptr = user_va
        cmd.check_refs.refs = refs
        self.call(cmd)

    @issues("IOMMU_TEST_CMD(MD_CHECK_IOTLB)")
    def check_iotlb(self, hwpt: int | HasId, iotlb_id: int, expected: int) -> None:
        """Succeeds when IOTLB entry ``iotlb_id`` of a mock nested HWPT holds ``expected``."""
        cmd = self.cmd(t.IOMMU_TEST_OP_MD_CHECK_IOTLB, obj_id(hwpt))
        cmd.check_iotlb.id = iotlb_id
        cmd.check_iotlb.iotlb = expected
        self.call(cmd)

    def iotlb_is(self, hwpt: int | HasId, iotlb_id: int, expected: int) -> bool:
        """Whether IOTLB entry ``iotlb_id`` holds ``expected`` (EINVAL from the mock means no)."""
        return _holds(self.check_iotlb, hwpt, iotlb_id, expected)

    def iotlb(self, hwpt: int | HasId, candidates: tuple[int, ...]) -> list[int | None]:
        """Which of ``candidates`` each of the MOCK_NESTED_DOMAIN_IOTLB_NUM entries holds."""
        return [
            next((v for v in candidates if self.iotlb_is(hwpt, i, v)), None)
            for i in range(t.MOCK_NESTED_DOMAIN_IOTLB_NUM)
        ]

    @issues("IOMMU_TEST_CMD(DEV_CHECK_CACHE)")
    def check_dev_cache(self, dev: int | HasDevId, cache_id: int, expected: int) -> None:
        """Succeeds when the mock device's cache entry ``cache_id`` holds ``expected``."""
        cmd = self.cmd(t.IOMMU_TEST_OP_DEV_CHECK_CACHE, dev_id(dev))
        cmd.check_dev_cache.id = cache_id
        cmd.check_dev_cache.cache = expected
        self.call(cmd)

    def dev_cache_is(self, dev: int | HasDevId, cache_id: int, expected: int) -> bool:
        return _holds(self.check_dev_cache, dev, cache_id, expected)

    def dev_cache(self, dev: int | HasDevId, candidates: tuple[int, ...]) -> list[int | None]:
        """Which of ``candidates`` each of the MOCK_DEV_CACHE_NUM entries holds."""
        return [
            next((v for v in candidates if self.dev_cache_is(dev, i, v)), None)
            for i in range(t.MOCK_DEV_CACHE_NUM)
        ]

    @issues("IOMMU_TEST_CMD(TRIGGER_IOPF)")
    def trigger_iopf(
        self,
        dev: int | HasDevId,
        *,
        pasid: int = 0,
        grpid: int = 2,
        perm: int = uapi.IOMMU_PGFAULT_PERM_READ | uapi.IOMMU_PGFAULT_PERM_WRITE,
        addr: int = 0xDEADBEEF,
    ) -> None:
        """Report a one-page fault group for ``dev`` (LAST_PAGE; PASID_VALID unless pasid 0)."""
        cmd = self.cmd(t.IOMMU_TEST_OP_TRIGGER_IOPF)
        args = cmd.trigger_iopf
        args.dev_id = dev_id(dev)
        args.pasid = pasid
        args.grpid = grpid
        args.perm = perm
        args.addr = addr
        self.call(cmd)

    @issues("IOMMU_TEST_CMD(TRIGGER_VEVENT)")
    def trigger_vevent(self, dev: int | HasDevId, count: int = 1) -> None:
        """Report ``count`` selftest vEVENTs (the device's virt_id) to its vIOMMU's vEVENTQ."""
        cmd = self.cmd(t.IOMMU_TEST_OP_TRIGGER_VEVENT)
        cmd.trigger_vevent.dev_id = dev_id(dev)
        for _ in range(count):
            self.call(cmd)

    @issues("IOMMU_TEST_CMD(DIRTY)")
    def set_dirty(
        self, hwpt: int | HasId, iova: int, length: int, page_size: int, bitmap: bytes
    ) -> int:
        """Mark mock-domain pages dirty from ``bitmap``; returns how many the mock set."""
        buf = ctypes.create_string_buffer(bytes(bitmap), max(len(bitmap), 8))
        cmd = self.cmd(t.IOMMU_TEST_OP_DIRTY, obj_id(hwpt))
        cmd.dirty.iova = iova
        cmd.dirty.length = length
        cmd.dirty.page_size = page_size
        cmd.dirty.uptr = ctypes.addressof(buf)
        self.call(cmd)
        return int(cmd.dirty.out_nr_dirty)


def _holds(check: Any, target: Any, index: int, expected: int) -> bool:
    try:
        check(target, index, expected)
    except IoctlError as err:
        if err.errno == errno.EINVAL:
            return False
        raise
    return True
