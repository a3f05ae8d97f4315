"""The SMMUv3 event queue as a guest driver sees it: 2^log2size 32-byte records, PROD and CONS.

Register rules (arm-smmu-v3.h ``Q_IDX``/``Q_WRP``/``Q_OVF``, arm-smmu-v3.c ``queue_full``,
``queue_empty``, ``arm_smmu_evtq_thread``): bits [log2size-1:0] index the queue, bit log2size is
the wrap bit, bit 31 is PROD.OVFLG / CONS.OVACKFLG, everything between is RES0.  Equal indices
with equal wrap bits is empty, with different wrap bits full (no slot is kept free).  An overflow
is pending while PROD.OVFLG differs from CONS.OVACKFLG; the driver acks it by copying OVFLG.
Positions in the verdict count records in consumption order, CONS first.
"""

from __future__ import annotations

from collections.abc import Sequence

from harness.errors import DecodeError
from harness.rings._layout import Buffer
from harness.rings.expect import ExpectedFault, FaultView, match_expected
from harness.rings.payloads import PayloadCheck, SmmuEventCheck
from harness.rings.verdict import Malformed, RingVerdict

EVENT_SIZE = 32
OVERFLOW_FLAG = 1 << 31
MAX_LOG2SIZE = 19
"""SMMU_IDR1.EVTQS is at most 19 (the architecture's limit on queue size)."""


def _pointer_problems(name: str, value: int, log2size: int) -> list[str]:
    res0 = ~(OVERFLOW_FLAG | (1 << (log2size + 1)) - 1) & 0xFFFFFFFF
    problems = []
    if value & ~0xFFFFFFFF:
        problems.append(f"SMMU_EVENTQ_{name}: {value:#x} is wider than 32 bits")
    if value & res0:
        problems.append(f"SMMU_EVENTQ_{name}: RES0 bits {value & res0:#x} set")
    return problems


def pending_count(prod: int, cons: int, log2size: int) -> int:
    """Records between CONS and PROD; DecodeError when PROD is behind CONS or over a queue ahead."""
    size = 1 << log2size
    index_mask = size - 1
    prod_index, cons_index = prod & index_mask, cons & index_mask
    wrapped = bool((prod ^ cons) & size)
    count = size - cons_index + prod_index if wrapped else prod_index - cons_index
    if count < 0:
        raise DecodeError("SMMU_EVENTQ_CONS", f"index {cons_index} is ahead of PROD {prod_index}")
    if count > size:
        raise DecodeError(
            "SMMU_EVENTQ_PROD", f"{count} records pending in a {size}-entry queue (wrap bits)"
        )
    return count


def check_smmu_evtq(
    queue: Buffer,
    log2size: int,
    prod: int,
    cons: int,
    expected: Sequence[ExpectedFault] = (),
    *,
    ordered: bool = False,
    strict: bool = True,
    payload: PayloadCheck | None = None,
) -> RingVerdict:
    """Consume from CONS to PROD as ``arm_smmu_evtq_thread`` would, reporting everything wrong.

    ``strict=False`` accepts RES0 bits (QEMU's emulated SMMUv3 sets some, see harness.smmuv3).
    """
    check = payload if payload is not None else SmmuEventCheck(strict=strict)
    malformed: list[Malformed] = []
    notes: list[str] = []
    overflow = bool((prod ^ cons) & OVERFLOW_FLAG)
    if not 0 <= log2size <= MAX_LOG2SIZE:
        bad_size = f"SMMU_EVENTQ_BASE.LOG2SIZE: {log2size} outside 0..{MAX_LOG2SIZE}"
        return RingVerdict("smmu-evtq", malformed=(Malformed(None, bad_size),))
    size = 1 << log2size
    for name, value in (("PROD", prod), ("CONS", cons)):
        malformed.extend(Malformed(None, text) for text in _pointer_problems(name, value, log2size))
    if len(queue) < size * EVENT_SIZE:
        malformed.append(
            Malformed(
                None,
                f"SMMU_EVENTQ_BASE: queue memory is {len(queue)} bytes, "
                f"2^{log2size} records need {size * EVENT_SIZE}",
            )
        )
        return RingVerdict("smmu-evtq", malformed=tuple(malformed), overflow_signalled=overflow)
    try:
        count = pending_count(prod, cons, log2size)
    except DecodeError as error:
        malformed.append(Malformed(None, str(error)))
        return RingVerdict("smmu-evtq", malformed=tuple(malformed), overflow_signalled=overflow)
    if count == size:
        notes.append(f"queue full ({size} records): the SMMU drops the next event and sets OVFLG")
    data = bytes(queue)
    keep_views = bool(expected)
    views: list[FaultView] = []
    index = cons & (size - 1)
    problem_at = check.problem_at
    for position in range(count):
        start = index * EVENT_SIZE
        problem = problem_at(data, start)
        if problem is not None:
            malformed.append(Malformed(position, f"slot {index}: {problem}"))
        elif keep_views:
            views.append(check.view(position, data[start : start + EVENT_SIZE]))
        index = (index + 1) & (size - 1)
    matches = match_expected(views, expected, ordered=ordered)
    return RingVerdict(
        ring="smmu-evtq",
        records_seen=count,
        out_of_order=matches.out_of_order,
        malformed=tuple(malformed),
        overflow_signalled=overflow,
        matched=matches.matched,
        unmatched_expected=matches.unmatched_expected,
        unexpected=matches.unexpected if expected else (),
        notes=tuple(notes),
    )


class SmmuEventQueue:
    """An in-memory event queue written the way the SMMU writes it and drained like the driver."""

    def __init__(self, log2size: int) -> None:
        if not 0 <= log2size <= MAX_LOG2SIZE:
            raise ValueError(f"log2size {log2size} outside 0..{MAX_LOG2SIZE}")
        self.log2size = log2size
        self.memory = bytearray(EVENT_SIZE << log2size)
        self.prod = 0
        self.cons = 0
        self.dropped = 0

    def _advance(self, pointer: int) -> int:
        wrap_and_index = (pointer & ((2 << self.log2size) - 1)) + 1
        return (pointer & OVERFLOW_FLAG) | (wrap_and_index & ((2 << self.log2size) - 1))

    @property
    def full(self) -> bool:
        size = 1 << self.log2size
        return (self.prod ^ self.cons) & ((size << 1) - 1) == size

    def produce(self, record: bytes) -> bool:
        """SMMU side: write at PROD; when full drop it and toggle OVFLG unless already pending."""
        if len(record) != EVENT_SIZE:
            raise ValueError(f"an event record is {EVENT_SIZE} bytes, got {len(record)}")
        if self.full:
            self.dropped += 1
            if not (self.prod ^ self.cons) & OVERFLOW_FLAG:
                self.prod ^= OVERFLOW_FLAG
            return False
        start = (self.prod & ((1 << self.log2size) - 1)) * EVENT_SIZE
        self.memory[start : start + EVENT_SIZE] = record
        self.prod = self._advance(self.prod)
        return True

    def consume(self) -> list[bytes]:
        """Driver side: take every record CONS..PROD, then ack any overflow (OVACKFLG := OVFLG)."""
        records = []
        mask = (1 << self.log2size) - 1
        while (self.prod ^ self.cons) & ((2 << self.log2size) - 1):
            start = (self.cons & mask) * EVENT_SIZE
            records.append(bytes(self.memory[start : start + EVENT_SIZE]))
            self.cons = self._advance(self.cons)
        self.cons = (self.cons & ~OVERFLOW_FLAG) | (self.prod & OVERFLOW_FLAG)
        return records

    def check(
        self, expected: Sequence[ExpectedFault] = (), *, ordered: bool = False, strict: bool = True
    ) -> RingVerdict:
        """The checker's verdict on the queue as it stands."""
        return check_smmu_evtq(
            self.memory,
            self.log2size,
            self.prod,
            self.cons,
            expected,
            ordered=ordered,
            strict=strict,
        )
