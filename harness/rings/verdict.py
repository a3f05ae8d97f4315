"""The verdict every ring checker returns: one frozen shape, every problem named, never raised."""

from __future__ import annotations

from dataclasses import dataclass, fields

from harness.rings.expect import ExpectedFault, Match

GroupKey = int | tuple[int | None, ...]
"""Identifies a page-request group: a cookie (iommufd) or a (sid/pasid, grpid) tuple."""

_SHOWN = 5


@dataclass(frozen=True)
class Malformed:
    """A record (``position`` in consumption order) or the ring header/registers (``None``)."""

    position: int | None
    error: str

    def __str__(self) -> str:
        where = "header" if self.position is None else f"#{self.position}"
        return f"{where}: {self.error}"


@dataclass(frozen=True)
class RingVerdict:
    """What a checker found in one ring; ``ok`` only when nothing at all is wrong.

    Identifiers in ``missing`` / ``duplicated`` / ``out_of_order`` are the ring's own: sequence
    numbers for the vEVENTQ, cookies for the iommufd fault queue, record positions otherwise
    (each checker's docstring says which).  ``notes`` are facts worth reading that are not
    failures (a ring that is exactly full, stop markers skipped).
    """

    ring: str
    records_seen: int = 0
    responses_seen: int = 0
    missing: tuple[int, ...] = ()
    duplicated: tuple[int, ...] = ()
    out_of_order: tuple[int, ...] = ()
    malformed: tuple[Malformed, ...] = ()
    overflow_signalled: bool = False
    lost_events: int = 0
    matched: tuple[Match, ...] = ()
    unmatched_expected: tuple[ExpectedFault, ...] = ()
    unexpected: tuple[int, ...] = ()
    unanswered_groups: tuple[GroupKey, ...] = ()
    unknown_responses: tuple[GroupKey, ...] = ()
    duplicate_responses: tuple[GroupKey, ...] = ()
    invalid_responses: tuple[GroupKey, ...] = ()
    groups_without_last_page: tuple[GroupKey, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the ring is complete, ordered, well formed and matched every expectation."""
        return not any(self.problems())

    def problems(self) -> dict[str, object]:
        """Every non-empty failure field by name (everything except counts and notes)."""
        skip = {"ring", "records_seen", "responses_seen", "matched", "notes"}
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip and getattr(self, f.name)
        }

    def summary(self) -> str:
        """One line for logs: OK/FAIL, counts, and the first few items of each problem."""
        head = f"{self.ring}: {'OK' if self.ok else 'FAIL'} {self.records_seen} records"
        if self.responses_seen:
            head += f", {self.responses_seen} responses"
        if self.matched or self.unmatched_expected:
            total = len(self.matched) + len(self.unmatched_expected)
            head += f", {len(self.matched)}/{total} expected matched"
        parts = [head]
        for name, value in self.problems().items():
            if isinstance(value, bool):
                parts.append(name)
            elif isinstance(value, int):
                parts.append(f"{name} {value}")
            else:
                parts.append(f"{name} {_brief(value)}")
        return "; ".join(parts)


def _brief(items: object) -> str:
    seq = list(items) if isinstance(items, tuple) else [items]
    shown = ", ".join(str(x) for x in seq[:_SHOWN])
    more = f", ... (+{len(seq) - _SHOWN})" if len(seq) > _SHOWN else ""
    return f"[{shown}{more}]"
