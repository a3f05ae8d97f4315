"""Page-request groups from first fault to response: the bookkeeping shared by PRI-style rings."""

from __future__ import annotations

from harness.rings.verdict import GroupKey


class GroupTracker:
    """Follows groups (keyed by cookie or by (pasid, grpid)) through faults and responses.

    A group is *open* from its first fault until the fault carrying the last-page flag, then
    *outstanding* until one valid response names it.  Everything that breaks that life cycle is
    collected, never raised.
    """

    def __init__(self) -> None:
        self.open: dict[GroupKey, int] = {}
        self.outstanding: dict[GroupKey, int] = {}
        self.answered: set[GroupKey] = set()
        self.without_last_page: list[GroupKey] = []
        self.unknown_responses: list[GroupKey] = []
        self.duplicate_responses: list[GroupKey] = []
        self.invalid_responses: list[GroupKey] = []

    def fault(self, key: GroupKey, last: bool, position: int) -> bool:
        """Record one fault of group ``key``; False when it re-delivers an outstanding group."""
        fresh = True
        if key not in self.open:
            if key in self.outstanding:
                fresh = False
            else:
                self.answered.discard(key)
            self.open[key] = position
        if last:
            self.outstanding[key] = self.open.pop(key)
        return fresh

    def close_open(self) -> None:
        """End every open group here: each lacked its last-page fault, each still needs a reply."""
        for key, position in self.open.items():
            self.without_last_page.append(key)
            self.outstanding.setdefault(key, position)
        self.open.clear()

    def close(self, key: GroupKey) -> None:
        """End one open group without its last-page fault."""
        position = self.open.pop(key)
        self.without_last_page.append(key)
        self.outstanding.setdefault(key, position)

    def response(self, key: GroupKey, valid: bool = True) -> None:
        """Record a response to ``key``; an invalid one (kernel: EINVAL) answers nothing."""
        if not valid:
            self.invalid_responses.append(key)
            return
        if key in self.open:
            self.close(key)
        if key in self.outstanding:
            del self.outstanding[key]
            self.answered.add(key)
        elif key in self.answered:
            self.duplicate_responses.append(key)
        else:
            self.unknown_responses.append(key)

    def unanswered(self) -> tuple[GroupKey, ...]:
        """Groups delivered (complete or not) that no valid response named, in delivery order."""
        pending = dict(self.outstanding)
        pending.update(self.open)
        return tuple(sorted(pending, key=pending.__getitem__))
