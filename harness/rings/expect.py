"""Expected faults: small predicates over a vendor-neutral view of one fault record."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

IntSpec = int | range | Callable[[int], bool] | None
"""An exact value, a ``range`` the value must lie in, a predicate, or ``None`` (any)."""

ReasonSpec = int | str | Callable[[int | str], bool] | None
"""A reason code, a reason name (compared with the record's ``reason_name``), or a predicate."""


class FaultView(NamedTuple):
    """The fields expectations can test; ``None`` where the ring format has no such field."""

    position: int
    sid: int | None = None
    pasid: int | None = None
    address: int | None = None
    reason: int | None = None
    reason_name: str | None = None
    is_write: bool | None = None


def _int_ok(spec: IntSpec, value: int | None) -> bool:
    if spec is None:
        return True
    if value is None:
        return False
    if isinstance(spec, int):
        return value == spec
    if isinstance(spec, range):
        return value in spec
    return bool(spec(value))


@dataclass(frozen=True)
class ExpectedFault:
    """A fault a test expects to see; unset fields match anything."""

    sid: IntSpec = None
    pasid: IntSpec = None
    address: IntSpec = None
    reason: ReasonSpec = None
    is_write: bool | None = None
    label: str = ""

    def matches(self, view: FaultView) -> bool:
        """True when every set field of this expectation holds for ``view``."""
        if self.is_write is not None and view.is_write is not self.is_write:
            return False
        return (
            _int_ok(self.sid, view.sid)
            and _int_ok(self.pasid, view.pasid)
            and _int_ok(self.address, view.address)
            and self._reason_ok(view)
        )

    def _reason_ok(self, view: FaultView) -> bool:
        spec = self.reason
        if spec is None:
            return True
        if isinstance(spec, str):
            return view.reason_name == spec
        if isinstance(spec, int):
            return view.reason == spec
        value = view.reason if view.reason is not None else view.reason_name
        return value is not None and bool(spec(value))

    def __str__(self) -> str:
        if self.label:
            return self.label
        shown = [
            f"{name}={_show(getattr(self, name))}"
            for name in ("sid", "pasid", "address", "reason", "is_write")
            if getattr(self, name) is not None
        ]
        return "ExpectedFault(" + ", ".join(shown) + ")"


def _show(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return repr(value)
    return hex(value)


@dataclass(frozen=True)
class Match:
    """Expected fault ``expected_index`` was matched by the record at ``position``."""

    expected_index: int
    position: int


@dataclass(frozen=True)
class MatchResult:
    """How records lined up with expectations."""

    matched: tuple[Match, ...]
    unmatched_expected: tuple[ExpectedFault, ...]
    unexpected: tuple[int, ...]
    out_of_order: tuple[int, ...]


def match_expected(
    views: Iterable[FaultView], expected: Sequence[ExpectedFault], *, ordered: bool = False
) -> MatchResult:
    """Give each record the first still-unmatched expectation it satisfies.

    A record matching nothing left is ``unexpected``.  With ``ordered``, a record that matches
    an expectation listed before one already matched is reported ``out_of_order`` (by position).
    """
    taken = [False] * len(expected)
    matched: list[Match] = []
    unexpected: list[int] = []
    out_of_order: list[int] = []
    highest = -1
    for view in views:
        for index, want in enumerate(expected):
            if not taken[index] and want.matches(view):
                taken[index] = True
                matched.append(Match(index, view.position))
                if ordered and index < highest:
                    out_of_order.append(view.position)
                highest = max(highest, index)
                break
        else:
            unexpected.append(view.position)
    unmatched = tuple(want for index, want in enumerate(expected) if not taken[index])
    return MatchResult(tuple(matched), unmatched, tuple(unexpected), tuple(out_of_order))
