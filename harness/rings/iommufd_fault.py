"""The iommufd fault queue: iommu_hwpt_pgfault groups read from the fault fd, responses back.

Kernel rules checked (drivers/iommu/iommufd/eventq.c): one read() returns whole groups only,
every fault of a group carries the group's cookie, the last one IOMMU_PGFAULT_FLAGS_LAST_PAGE;
cookies come from an XA_FLAGS_ALLOC1 xarray (never 0, unique among outstanding groups, reused
once answered); a response must name an outstanding cookie exactly once with code SUCCESS or
INVALID.  Identifiers in the verdict are cookies: ``duplicated`` lists cookies delivered again
while still outstanding, ``out_of_order`` the cookies of faults matching ordered expectations
out of order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from harness.rings._layout import Buffer, as_buffer, compiled
from harness.rings.expect import ExpectedFault, FaultView, match_expected
from harness.rings.groups import GroupTracker
from harness.rings.verdict import Malformed, RingVerdict
from harness.uapi import iommufd as uapi

PGFAULT = compiled(
    uapi.iommu_hwpt_pgfault,
    [
        ("flags", "I"),
        ("dev_id", "I"),
        ("pasid", "I"),
        ("grpid", "I"),
        ("perm", "I"),
        ("__reserved", "I"),
        ("addr", "Q"),
        ("length", "I"),
        ("cookie", "I"),
    ],
)
RESPONSE = compiled(uapi.iommu_hwpt_page_response, [("cookie", "I"), ("code", "I")])

_LAST = int(uapi.IOMMU_PGFAULT_FLAGS_LAST_PAGE)
_PASID_VALID = int(uapi.IOMMU_PGFAULT_FLAGS_PASID_VALID)
_WRITE = int(uapi.IOMMU_PGFAULT_PERM_WRITE)
_KNOWN_PERM = int(
    uapi.IOMMU_PGFAULT_PERM_READ
    | uapi.IOMMU_PGFAULT_PERM_WRITE
    | uapi.IOMMU_PGFAULT_PERM_EXEC
    | uapi.IOMMU_PGFAULT_PERM_PRIV
)
_CODES = frozenset({int(uapi.IOMMUFD_PAGE_RESP_SUCCESS), int(uapi.IOMMUFD_PAGE_RESP_INVALID)})


class FaultQueueChecker:
    """Feed read() and write() buffers in the order they happened, then ask for the verdict."""

    def __init__(self, expected: Sequence[ExpectedFault] = (), *, ordered: bool = False) -> None:
        self.expected = tuple(expected)
        self.ordered = ordered
        self.groups = GroupTracker()
        self.records = 0
        self.responses = 0
        self.duplicated: list[int] = []
        self.malformed: list[Malformed] = []
        self.views: list[FaultView] = []
        self.cookie_at: dict[int, int] = {}

    def feed_faults(self, data: Buffer | Iterable[object]) -> None:
        """Check one read() of the fault fd (bytes, or iommu_hwpt_pgfault objects)."""
        buf = as_buffer(data)
        whole = len(buf) - len(buf) % PGFAULT.size
        groups = self.groups
        open_groups = groups.open
        keep_views = bool(self.expected)
        current = -1
        ident: tuple[int, int, int] = (0, 0, 0)
        position = self.records
        for flags, dev_id, pasid, grpid, perm, reserved, addr, _, cookie in PGFAULT.iter_unpack(
            buf[:whole]
        ):
            if reserved or not cookie or perm & ~_KNOWN_PERM:
                self.malformed.append(Malformed(position, _pgfault_problem(reserved, cookie, perm)))
                position += 1
                continue
            if cookie == current and cookie in open_groups:
                if (dev_id, pasid, grpid) != ident:
                    self.malformed.append(
                        Malformed(
                            position,
                            f"iommu_hwpt_pgfault.cookie: {cookie} mixes (dev_id, pasid, grpid) "
                            f"{ident} and {(dev_id, pasid, grpid)} in one group",
                        )
                    )
                groups.fault(cookie, bool(flags & _LAST), position)
            else:
                if current in open_groups:
                    groups.close(current)
                current = cookie
                ident = (dev_id, pasid, grpid)
                if not groups.fault(cookie, bool(flags & _LAST), position):
                    self.duplicated.append(cookie)
            if keep_views:
                self.views.append(
                    FaultView(
                        position,
                        sid=dev_id,
                        pasid=pasid if flags & _PASID_VALID else None,
                        address=addr,
                        is_write=bool(perm & _WRITE),
                    )
                )
                self.cookie_at[position] = cookie
            position += 1
        self.records = position
        if current in open_groups:
            groups.close(current)
        if whole != len(buf):
            self.malformed.append(
                Malformed(
                    position,
                    f"read buffer: {len(buf) - whole} trailing bytes, not a whole "
                    f"iommu_hwpt_pgfault ({PGFAULT.size} bytes)",
                )
            )

    def feed_responses(self, data: Buffer | Iterable[object]) -> None:
        """Check one write() to the fault fd (bytes, or iommu_hwpt_page_response objects)."""
        buf = as_buffer(data)
        whole = len(buf) - len(buf) % RESPONSE.size
        response = self.groups.response
        count = 0
        for cookie, code in RESPONSE.iter_unpack(buf[:whole]):
            response(cookie, code in _CODES)
            count += 1
        self.responses += count
        if whole != len(buf):
            self.malformed.append(
                Malformed(
                    None,
                    f"write buffer: {len(buf) - whole} trailing bytes, not a whole "
                    f"iommu_hwpt_page_response ({RESPONSE.size} bytes)",
                )
            )

    def verdict(self) -> RingVerdict:
        """Everything found so far; groups still outstanding count as unanswered."""
        matches = match_expected(self.views, self.expected, ordered=self.ordered)
        groups = self.groups
        return RingVerdict(
            ring="iommufd-fault",
            records_seen=self.records,
            responses_seen=self.responses,
            duplicated=tuple(self.duplicated),
            out_of_order=tuple(self.cookie_at[position] for position in matches.out_of_order),
            malformed=tuple(self.malformed),
            matched=matches.matched,
            unmatched_expected=matches.unmatched_expected,
            unexpected=matches.unexpected if self.expected else (),
            unanswered_groups=groups.unanswered(),
            unknown_responses=tuple(groups.unknown_responses),
            duplicate_responses=tuple(groups.duplicate_responses),
            invalid_responses=tuple(groups.invalid_responses),
            groups_without_last_page=tuple(groups.without_last_page),
        )


def _pgfault_problem(reserved: int, cookie: int, perm: int) -> str:
    if reserved:
        return f"iommu_hwpt_pgfault.__reserved: must be 0, got {reserved:#x}"
    if not cookie:
        return "iommu_hwpt_pgfault.cookie: 0 is never allocated (XA_FLAGS_ALLOC1)"
    return f"iommu_hwpt_pgfault.perm: unknown bits {perm & ~_KNOWN_PERM:#x}"


def check_fault_queue(
    faults: Buffer | Iterable[object],
    responses: Buffer | Iterable[object] = b"",
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = False,
) -> RingVerdict:
    """One read() of faults followed by one write() of responses, checked together."""
    checker = FaultQueueChecker(expected, ordered=ordered)
    checker.feed_faults(faults)
    checker.feed_responses(responses)
    return checker.verdict()
