"""The hypothesis state machine and runner, with a fake executor in place of the guest.

A unit test cannot boot a guest, so ``ModelKernel`` stands in for it: it answers every
step with what the model predicted (fresh IDs for new objects), except where a test
plants a divergence.  This checks the plumbing (budget, chunks, progress, coverage,
shrinking, the reproducer's trace), not the kernel: tests/vm/test_fuzz.py does that.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from harness.fuzz import model as model_mod
from harness.fuzz.reduce import replay, signature
from harness.fuzz.runner import fuzz

pytestmark = pytest.mark.tier0

Planted = Callable[[model_mod.Model, model_mod.Prediction], str | None]


class ModelKernel:
    """Answers each step as the model predicted it (a stand-in for the guest, either tier:
    every new object's IDs, the HWPT an attach lands on, a healthy SMMU at the end)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, planted: Planted | None = None) -> None:
        self.ids = itertools.count(1)
        self.planted = planted
        self.last: tuple[model_mod.Model, model_mod.Prediction] | None = None
        self.examples = 0
        original = model_mod.Model.predict

        def predict(m: model_mod.Model, op: str, **args: Any) -> model_mod.Prediction:
            pred = original(m, op, **args)
            self.last = (m, pred)
            return pred

        monkeypatch.setattr(model_mod.Model, "predict", predict)

    def begin(self) -> None:
        self.examples += 1
        self.last = None

    def end(self) -> dict[str, Any]:
        m = self.last[0] if self.last else None
        return {"queue_fds": m.open_queue_fds() if m else 0, "queue_fds_after_close": 0,
                "dmesg": "", "smmu": {"gerror_active": 0}}  # fmt: skip

    def step(self, wire: dict[str, Any]) -> dict[str, Any]:
        assert self.last is not None
        m, pred = self.last
        obs: dict[str, Any] = {"outcome": pred.outcome, **pred.fields}
        if self.planted is not None and (planted := self.planted(m, pred)):
            return {"outcome": planted, **pred.fields}
        if pred.outcome == "ok":
            obs.update(id=next(self.ids), stdev=next(self.ids), idev=next(self.ids))
            if "hwpt" not in obs and pred.op in ("mock_device", "replace", "attach"):
                obs["hwpt"] = next(self.ids)
        return obs


def test_a_clean_run_covers_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    result = fuzz(ModelKernel(monkeypatch), budget=2.0, seed=5, log=lines.append,
                  progress_every=0.5)  # fmt: skip
    assert not result.found, result.summary()
    assert result.examples > 5 and result.coverage.steps > 100
    assert len(lines) >= 2 and "steps/s" not in lines[0] and "steps (" in lines[0]
    ioctls = {ioctl for ioctl, _ in result.coverage.outcomes}
    assert {"IOMMU_VIOMMU_ALLOC", "IOMMU_VEVENTQ_ALLOC", "IOMMU_HWPT_INVALIDATE"} <= ioctls


def _veventq_nested_invalidate(m: model_mod.Model, pred: model_mod.Prediction) -> str | None:
    """The planted divergence: invalidating a nested HWPT over a vIOMMU while a vEVENTQ is open."""
    if pred.op != "invalidate" or pred.outcome != "ok":
        return None
    found = m.lookup(pred.wire["args"]["target"])
    if found is None or found[1].viommu is None:
        return None
    return "EOPNOTSUPP" if any(q.fd_open for q in m.live("VEVENTQ")) else None


def test_a_divergence_is_found_and_shrunk(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = ModelKernel(monkeypatch, _veventq_nested_invalidate)
    result = fuzz(kernel, budget=300.0, seed=1,
                  log=lambda _: None, shrink_limit=10.0, reduce_limit=600.0)  # fmt: skip
    # (delta debugging runs to its end, a 1-minimal trace, however loaded the machine is)
    assert result.failure is not None, result.summary()
    trace = result.failure.trace
    ops = [s["step"]["op"] for s in trace]
    assert ops[-1] == "invalidate" and "expected ok, got EOPNOTSUPP" in str(result.failure)
    assert result.failure.failing_step == len(trace) - 1
    assert str(result.failure).startswith(f"step {len(trace) - 1} (invalidate)")
    assert {"viommu_alloc", "veventq_alloc"} <= set(ops), ops
    # 1-minimal (what delta debugging promises, not a minimum): without any one of its
    # steps the trace no longer fails this way; and a few steps (seen: 7 to 10)
    want = signature(trace[-1])
    for i in range(len(trace) - 1):
        again = replay(kernel, trace[:i] + trace[i + 1 :])
        assert not (again and again[-1].get("mismatch") and signature(again[-1]) == want), i
    assert len(ops) <= 12, ops


class SignatureKernel(ModelKernel):
    """A ModelKernel that also binds every step to the guest's ``Session`` method."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(monkeypatch)
        self.ops: set[str] = set()

    def step(self, wire: dict[str, Any]) -> dict[str, Any]:
        from harness.scenarios.guest.fuzz import Session

        method = getattr(Session, wire["op"])
        inspect.signature(method).bind(None, **wire["args"])  # TypeError: a wrong argument
        self.ops.add(wire["op"])
        return super().step(wire)


def test_every_step_binds_to_the_guest_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's wire arguments are exactly what ``Session.<op>`` takes (the first
    real run of IOMMU_OPTION died on a renamed argument, which no model test saw)."""
    kernel = SignatureKernel(monkeypatch)
    result = fuzz(kernel, budget=4.0, seed=7, log=lambda _: None)
    assert not result.found, result.summary()
    new_ops = {"option", "hw_info", "iova_ranges", "allow_iovas", "set_dirty_tracking",
               "mark_dirty", "dirty_bitmap"}  # fmt: skip
    assert new_ops <= kernel.ops, new_ops - kernel.ops


WARN_AT_END = """\
[  180.442065] ------------[ cut here ]------------
[  180.442158] WARNING: drivers/iommu/iommufd/viommu.c:9 at iommufd_viommu_destroy+0x6b/0xa0, CPU#0: python3/78
"""  # noqa: E501


class SplatAtEnd(ModelKernel):
    """A stand-in kernel that WARNs when an example that made a vIOMMU and a fault queue
    ends (every step answered as predicted: only the end-of-example oracle sees it)."""

    def begin(self) -> None:
        super().begin()
        self.made: set[str] = set()

    def step(self, wire: dict[str, Any]) -> dict[str, Any]:
        obs = super().step(wire)
        if obs["outcome"] == "ok":
            self.made.add(wire["op"])
        return obs

    def end(self) -> dict[str, Any]:
        end = super().end()
        if {"viommu_alloc", "fault_alloc"} <= self.made:
            end["dmesg"] = WARN_AT_END
        return end


def test_an_end_of_example_splat_is_reduced_to_the_steps_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kernel = SplatAtEnd(monkeypatch)
    result = fuzz(kernel, budget=300.0, seed=3,
                  log=lambda _: None, shrink_limit=10.0, reduce_limit=600.0)  # fmt: skip
    failure = result.failure
    assert failure is not None, result.summary()
    title = "WARNING: drivers/iommu/iommufd/viommu.c:9 at iommufd_viommu_destroy"
    assert failure.failing_step is None and failure.splat_title == title
    assert str(failure) == f"kernel warning: {title}"
    ops = [s["step"]["op"] for s in failure.trace]
    assert {"viommu_alloc", "fault_alloc"} <= set(ops) and len(ops) <= 8, ops
    for i in range(len(failure.trace)):  # 1-minimal: without any one step, no WARN
        ends: list[dict[str, Any]] = []
        again = replay(kernel, failure.trace[:i] + failure.trace[i + 1 :], on_end=ends.append)
        assert again is None or not ends or "WARNING" not in ends[0]["dmesg"], ops[i]
