"""Shrink a failing trace further by replaying subsets of its calls (delta debugging).

Hypothesis shrinks the choices that generated an example; a stateful example whose later
steps pick objects by position loses its failure when an unrelated earlier step goes, so
its result can keep steps the failure does not need.  ``reduce_trace`` then works on the
calls themselves: each step's call names objects by the handle of the step that created
them, so any subset can be replayed on a fresh iommufd (the model re-predicts every step;
a subset that uses an object none of its steps created is skipped).  A subset reproduces
the failure when its last step disagrees with the model the same way (same operation,
same predicted and observed outcome).  The result is 1-minimal: removing any one step
loses the failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from harness import klog
from harness.fuzz.model import Model

#: call arguments that name objects (handles); None is a bogus ID, -1 "no fault queue"
HANDLE_ARGS = frozenset({"ioas", "dst", "src", "pt", "dev", "hwpt", "viommu", "target",
                         "queue", "fault"})  # fmt: skip


def signature(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a step's disagreement: operation, predicted and observed outcome."""
    got = entry.get("got") or {}
    return (entry["step"]["op"], entry["expect"].get("outcome"), got.get("outcome"))


class _InvalidError(Exception):
    """The subset uses an object that none of its steps created."""


def replay(
    executor: Any,
    steps: list[dict[str, Any]],
    new_model: Callable[[], Model] = Model,
    on_end: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]] | None:
    """Replay ``steps`` (trace entries with ``call`` and ``created``) on a fresh session.

    Returns the new trace up to the first disagreement (its last entry has ``mismatch``),
    the whole trace when every step agreed, or None when the subset is not replayable;
    the last entry carries the queue fds the model expects open (``open_fds``).
    ``on_end`` gets what the session's end reported (its kernel log among it).
    """
    model = new_model()
    handles: dict[int, int] = {}
    trace: list[dict[str, Any]] = []
    executor.begin()
    try:
        for original in steps:
            args = {}
            for key, value in original["call"]["args"].items():
                if key in HANDLE_ARGS and value is not None and value != -1:
                    if value not in handles:
                        raise _InvalidError
                    value = handles[value]
                args[key] = value
            before = model._next
            pred = model.predict(original["call"]["op"], **args)
            obs = executor.step(pred.wire)
            entry = {
                "rule": original.get("rule", ""),
                "step": pred.wire,
                "expect": {"outcome": pred.outcome, **pred.fields},
                "call": original["call"],
                "got": obs,
            }
            problem = pred.settle(obs)
            created = list(range(before, model._next))
            entry["created"] = list(original.get("created", []))
            for old, new in zip(original.get("created", []), created, strict=False):
                handles[old] = new
            trace.append(entry)
            if problem is not None:
                entry["mismatch"] = problem
                break
        if trace:
            trace[-1]["open_fds"] = model.open_queue_fds()
    except _InvalidError:
        return None
    finally:
        end = executor.end()
        if on_end is not None:
            on_end(end)
    return trace


def reduce_trace(
    executor: Any,
    trace: list[dict[str, Any]],
    *,
    budget: float = 120.0,
    new_model: Callable[[], Model] = Model,
    splat: str = "",
) -> list[dict[str, Any]]:
    """The smallest replayable subset of ``trace`` that fails the same way (ddmin).

    A trace whose last step disagreed is reduced keeping that step; one whose every step
    agreed and whose example ended with a kernel report (``splat``: its ``Splat.title``)
    is reduced over all its steps, a subset failing the same way when its steps all agree
    and its kernel log has a report with that title.
    """
    if not trace or "call" not in trace[-1]:
        return trace
    steps: list[dict[str, Any]]
    last: list[dict[str, Any]]
    if trace[-1].get("mismatch"):
        steps, last = trace[:-1], [trace[-1]]
        want = signature(trace[-1])

        def fails(candidate: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            result = replay(executor, candidate, new_model)
            if result and result[-1].get("mismatch") and signature(result[-1]) == want:
                return result
            return None

    elif splat:
        steps, last = trace, []

        def fails(candidate: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            ends: list[dict[str, Any]] = []
            result = replay(executor, candidate, new_model, ends.append)
            if not result or result[-1].get("mismatch") or not ends:
                return None
            titles = {s.title for s in klog.find_splats(str(ends[0].get("dmesg", "")))}
            return result if splat in titles else None

    else:
        return trace
    deadline = time.monotonic() + budget
    best = trace
    chunks = 2
    while steps and time.monotonic() < deadline:
        size = max(len(steps) // chunks, 1)
        reduced = False
        for start in range(0, len(steps), size):
            if time.monotonic() >= deadline:
                break
            candidate = steps[:start] + steps[start + size :]
            result = fails([*candidate, *last])
            if result is not None:
                steps, best = candidate, result
                chunks = max(chunks - 1, 2)
                reduced = True
                break
        if not reduced:
            if size == 1:
                break
            chunks = min(chunks * 2, len(steps))
    return best
