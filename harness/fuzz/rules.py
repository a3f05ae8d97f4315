"""The hypothesis state machine: rules are nesting operations, the model predicts each.

Why the split (state machine and model on the host, one operation per agent call in the
guest): the guest root filesystem has no hypothesis, and the model must stay independent
of the kernel it judges; the host also survives a guest that dies, and keeps the example
database.  Each hypothesis example is one fresh /dev/iommu in the guest (``fuzz.begin`` /
``fuzz.end``), so examples are independent and hypothesis can replay them to shrink.

Every rule asks ``Model.predict`` first, sends the step, and requires the observation to
equal the prediction (outcome and result fields); ``teardown`` adds the per-example
oracles: the queue fds the guest holds (read back from /proc) equal the model's count,
none is left after the iommufd closes, and the kernel log since the example began has no
splat (``harness.klog``).  The first disagreement raises ``FuzzFailureError``, which hypothesis
shrinks; ``Run.failure`` keeps the last one raised, i.e. the shrunk example.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
)

from harness import klog
from harness.agent.client import AgentRemoteError
from harness.fuzz.coverage import Coverage
from harness.fuzz.model import (
    ALLOW_KINDS,
    BITMAP_SHAPES,
    DATA_KINDS,
    DEVICE_FLAGS,
    ENTRY_KINDS,
    HW_INFO_TYPES,
    OPTION_OPS,
    OPTIONS,
    PAGES,
    PASIDS,
    VEVENTQ_MAX_DEPTH,
    Model,
    Prediction,
)


class Executor(Protocol):
    """Where steps run: a guest session per example (``harness.fuzz.runner.GuestExecutor``)."""

    def begin(self) -> None: ...

    def step(self, wire: dict[str, Any]) -> dict[str, Any]: ...

    def end(self) -> dict[str, Any]: ...


class FuzzFailureError(AssertionError):
    """The kernel (or the guest) disagreed with the model; carries the example's trace."""

    def __init__(
        self,
        what: str,
        trace: list[dict[str, Any]],
        splat: str = "",
        open_fds: int = 0,
        splat_title: str = "",
    ) -> None:
        super().__init__(what)
        self.what = what
        self.trace = [dict(s) for s in trace]
        self.splat = splat
        #: the first kernel report's ``Splat.title`` (what a reduction must meet again)
        self.splat_title = splat_title
        #: queue fds the model expects open after the last step it accepted
        self.open_fds = open_fds

    @property
    def failing_step(self) -> int | None:
        """Index of the step whose answer disagreed (None: an end-of-example oracle)."""
        for i, step in enumerate(self.trace):
            if step.get("mismatch"):
                return i
        return None


class GuestLostError(BaseException):
    """The guest stopped answering: not shrinkable (every replay would fail at once)."""

    def __init__(self, cause: BaseException, trace: list[dict[str, Any]]) -> None:
        super().__init__(f"guest stopped answering: {cause}")
        self.cause = cause
        self.trace = [dict(s) for s in trace]


class BudgetSpent(BaseException):
    """The time budget ended: stop generating examples (not a failure, not shrunk)."""


@dataclass
class Run:
    """What one fuzz run shares across examples: executor, coverage, counters, failures."""

    executor: Executor
    coverage: Coverage = field(default_factory=Coverage)
    log: Callable[[str], None] = print
    progress_every: float = 10.0
    examples: int = 0
    failures_seen: int = 0
    failure: FuzzFailureError | None = None
    first_failure_at: float | None = None
    #: monotonic time after which no new example starts
    deadline: float | None = None
    #: seconds hypothesis may spend shrinking a failure (its own cap is 300)
    shrink_limit: float = 120.0
    #: set when the budget or the shrink limit stopped hypothesis
    stopped: bool = False
    started: float = field(default_factory=time.monotonic)
    _last_progress: float = field(default_factory=time.monotonic)

    def progress(self, force: bool = False) -> None:
        """One progress line, at most every ``progress_every`` seconds."""
        now = time.monotonic()
        if not force and now - self._last_progress < self.progress_every:
            return
        self._last_progress = now
        elapsed = max(now - self.started, 1e-9)
        cov = self.coverage
        self.log(
            f"fuzz: {elapsed:6.0f}s  {cov.steps} steps ({cov.steps / elapsed:.1f}/s)  "
            f"{self.examples} examples  {len(cov.pairs)} rule pairs  "
            f"{len(cov.outcomes)} ioctl x outcome  failures so far: {self.failures_seen}"
        )


#: handles of the objects the rules made (hypothesis bundles, shared by every tier's rules)
ioases = Bundle("ioases")
hwpts = Bundle("hwpts")
devices = Bundle("devices")
viommus = Bundle("viommus")
vdevices = Bundle("vdevices")
queues = Bundle("queues")


class FuzzMachine(RuleBasedStateMachine):
    """The plumbing every tier's rules share: one model and one guest session per example,
    each step predicted, sent and judged (``_do``), the per-example oracles (``teardown``).
    A subclass adds the rules and says which model it predicts with (``new_model``);
    ``make_machine`` binds it to a ``Run``."""

    fuzz_run: ClassVar[Run]

    @classmethod
    def new_model(cls) -> Model:
        return Model()

    def __init__(self) -> None:
        super().__init__()
        self.model = self.new_model()
        self.trace: list[dict[str, Any]] = []
        self.failed = False
        self.started = False
        now = time.monotonic()
        if self.fuzz_run.first_failure_at is not None:
            if now - self.fuzz_run.first_failure_at > self.fuzz_run.shrink_limit:
                self.fuzz_run.stopped = True
                raise BudgetSpent  # stop shrinking: the last failure raised is the best
        elif self.fuzz_run.deadline is not None and now > self.fuzz_run.deadline:
            self.fuzz_run.stopped = True
            raise BudgetSpent  # ends the hypothesis run without a verdict on anything
        self.started = True
        self.fuzz_run.examples += 1
        self.fuzz_run.coverage.example_ended()
        self.fuzz_run.executor.begin()

    # --- plumbing -----------------------------------------------------------------

    def _do(self, rule_name: str, pred: Prediction) -> dict[str, Any] | None:
        """Send one predicted step; the observation, or None when it was refused."""
        entry: dict[str, Any] = {
            "rule": rule_name,
            "step": pred.wire,
            "expect": {"outcome": pred.outcome, **pred.fields},
            "call": pred.call,
        }
        before = self.model._next
        self.trace.append(entry)
        try:
            obs = self.fuzz_run.executor.step(pred.wire)
        except AgentRemoteError as exc:  # the guest answered, with an executor exception
            entry["mismatch"] = f"executor raised {exc.remote_type}: {exc.remote_message}"
            self._fail(f"step {len(self.trace) - 1} ({pred.op}): {entry['mismatch']}")
            raise  # not reached: _fail raises
        except Exception as exc:
            self.failed = True
            raise GuestLostError(exc, self.trace) from exc
        entry["got"] = obs
        self.fuzz_run.coverage.record(rule_name, pred.ioctl, str(obs.get("outcome")))
        self.fuzz_run.progress()
        problem = pred.settle(obs)
        entry["created"] = list(range(before, self.model._next))
        if problem is not None:
            entry["mismatch"] = problem
            self._fail(f"step {len(self.trace) - 1} ({pred.op}): {problem}")
        return obs if obs.get("outcome") == "ok" else None

    def _fail(self, what: str, splat: str = "", splat_title: str = "") -> None:
        self.failed = True
        self.fuzz_run.failures_seen += 1
        if self.fuzz_run.first_failure_at is None:
            self.fuzz_run.first_failure_at = time.monotonic()
        failure = FuzzFailureError(
            what, self.trace, splat, self.model.open_queue_fds(), splat_title
        )
        self.fuzz_run.failure = failure
        raise failure

    def _created(self, rule_name: str, pred: Prediction) -> Any:
        """Run an allocation; the new object's handle for the target bundle, or nothing."""
        before = self.model._next
        obs = self._do(rule_name, pred)
        if obs is None:
            return multiple()
        new = [
            h
            for h in range(before, self.model._next)
            if self.model.objs[h].kind != "HWPT_PAGING" or not self.model.objs[h].auto
        ]
        return multiple(*new)

    def teardown(self) -> None:
        if not self.started:
            return
        try:
            end = self.fuzz_run.executor.end()
        except Exception as exc:
            if self.failed:
                return
            raise GuestLostError(exc, self.trace) from exc
        if not self.failed:
            self.check_end(end)

    def check_end(self, end: dict[str, Any]) -> None:
        """The per-example oracles on what the guest's ``end`` reported (a tier adds its own)."""
        want = self.model.open_queue_fds()
        if end.get("queue_fds") != want:
            self._fail(f"open queue fds at the end: expected {want}, got {end.get('queue_fds')}")
        if end.get("queue_fds_after_close"):
            self._fail(f"{end['queue_fds_after_close']} queue fds left after closing them")
        splats = klog.find_splats(str(end.get("dmesg", "")))
        if splats:
            self._fail(
                f"kernel {splats[0].kind}: {splats[0].title}",
                "\n\n".join(f"[{s.kind}] {s.text()}" for s in splats),
                splats[0].title,
            )

    # --- choosing arguments -------------------------------------------------------

    def _pick(self, data: st.DataObject, label: str, *kinds: str, stale: bool = True) -> int:
        """A live handle of ``kinds`` mostly; sometimes any handle ever made (stale IDs)."""
        live = [h for h in self.model.handles(*kinds, alive=True) if self._fits(h, label)]
        anything = self.model.handles()
        if live and (not stale or not anything or data.draw(st.integers(0, 9), label) < 9):
            return data.draw(st.sampled_from(live), label)
        return data.draw(st.sampled_from(anything or [0]), label)

    def _fits(self, handle: int, label: str) -> bool:
        obj = self.model.objs[handle]
        if label == "nest parent":
            return obj.kind == "VIOMMU" or (obj.nest_parent and not obj.auto)
        if label == "queue":
            return obj.fd_open
        return True

    def _has(self, *kinds: str) -> bool:
        return bool(self.model.handles(*kinds, alive=True))


class CommonRules(FuzzMachine):
    """Rules every tier has: IOAS mappings, fault queues, queue reads and closes, destroy."""

    # --- IOAS ---------------------------------------------------------------------

    @precondition(lambda self: len(self.model.live("IOAS")) < 3)
    @rule(target=ioases)
    def ioas_alloc(self) -> Any:
        return self._created("ioas_alloc", self.model.predict("ioas_alloc"))

    @precondition(lambda self: self._has("IOAS"))
    @rule(data=st.data(), page=st.integers(0, PAGES - 1), npages=st.integers(1, 4))
    def map(self, data: st.DataObject, page: int, npages: int) -> None:
        ioas = self._pick(data, "ioas", "IOAS")
        npages = min(npages, PAGES - page)
        self._do("map", self.model.predict("map", ioas=ioas, page=page, npages=npages))

    @precondition(lambda self: self._has("IOAS"))
    @rule(data=st.data(), page=st.integers(0, PAGES - 1), npages=st.integers(1, 4))
    def unmap(self, data: st.DataObject, page: int, npages: int) -> None:
        ioas = self._pick(data, "ioas", "IOAS")
        npages = min(npages, PAGES - page)
        self._do("unmap", self.model.predict("unmap", ioas=ioas, page=page, npages=npages))

    @precondition(lambda self: self._has("IOAS"))
    @rule(data=st.data())
    def unmap_all(self, data: st.DataObject) -> None:
        ioas = self._pick(data, "ioas", "IOAS")
        self._do("unmap_all", self.model.predict("unmap_all", ioas=ioas))

    @precondition(lambda self: self._has("IOAS"))
    @rule(
        data=st.data(),
        src_page=st.integers(0, PAGES - 1),
        dst_page=st.integers(0, PAGES - 1),
        npages=st.integers(1, 3),
    )
    def copy(self, data: st.DataObject, src_page: int, dst_page: int, npages: int) -> None:
        src = self._pick(data, "src", "IOAS")
        dst = self._pick(data, "dst", "IOAS")
        npages = min(npages, PAGES - src_page, PAGES - dst_page)
        pred = self.model.predict(
            "copy", dst=dst, src=src, src_page=src_page, dst_page=dst_page, npages=npages
        )
        self._do("copy", pred)

    # --- queues --------------------------------------------------------------------

    @precondition(lambda self: len(self.model.live("FAULT")) < 2)
    @rule(target=queues)
    def fault_alloc(self) -> Any:
        return self._created("fault_alloc", self.model.predict("fault_alloc"))

    @precondition(lambda self: self.model.open_queue_fds() > 0)
    @rule(data=st.data())
    def read_queue(self, data: st.DataObject) -> None:
        queue = self._pick(data, "queue", "VEVENTQ", "FAULT")
        op = "read_vevents" if self.model.objs[queue].kind == "VEVENTQ" else "read_faults"
        self._do(op, self.model.predict(op, queue=queue))

    @precondition(lambda self: self.model.open_queue_fds() > 0)
    @rule(data=st.data())
    def close_fd(self, data: st.DataObject) -> None:
        queue = self._pick(data, "queue", "VEVENTQ", "FAULT")
        self._do("close_fd", self.model.predict("close_fd", queue=queue))

    # --- destroy ------------------------------------------------------------------

    @precondition(lambda self: bool(self.model.handles(alive=True)))
    @rule(data=st.data(), as_device=st.integers(0, 4))
    def destroy(self, data: st.DataObject, as_device: int) -> None:
        obj = self._pick(data, "object", stale=False)
        role = "DEVICE" if as_device == 0 else ""
        if role == "" and self._known_bug(obj):
            return
        self._do("destroy", self.model.predict("destroy", target=obj, role=role))

    @rule(obj=st.one_of(ioases, hwpts, devices, viommus, vdevices, queues))
    def destroy_any(self, obj: int) -> None:
        if self._known_bug(obj):
            return
        self._do("destroy_any", self.model.predict("destroy", target=obj))

    # --- the VFIO compatibility IOAS -------------------------------------------------

    @rule(data=st.data(), action=st.sampled_from(["get", "set", "set", "clear", "bad"]))
    def vfio_ioas(self, data: st.DataObject, action: str) -> None:
        ioas = self._pick(data, "ioas", "IOAS") if self._has("IOAS") else None
        self._do("vfio_ioas", self.model.predict("vfio_ioas", action=action, ioas=ioas))

    # --- vDEVICE (a vIOMMU and a device of the tier) ------------------------------

    @precondition(lambda self: self._has("DEVICE") and self._has("VIOMMU"))
    @rule(target=vdevices, data=st.data(), virt_id=st.integers(0, 3))
    def vdevice_alloc(self, data: st.DataObject, virt_id: int) -> Any:
        viommu = self._pick(data, "viommu", "VIOMMU")
        dev = self._pick(data, "dev", "DEVICE")
        pred = self.model.predict("vdevice_alloc", viommu=viommu, dev=dev, virt_id=virt_id)
        return self._created("vdevice_alloc", pred)

    # --- the first parts of a nesting stack (each tier's ``nesting_stack``) --------------

    def _made(self, rule_name: str, pred: Prediction) -> int | None:
        """Run an allocation step; the handle of what it made (an auto domain aside)."""
        before = self.model._next
        self._do(rule_name, pred)
        new = [h for h in range(before, self.model._next) if not self.model.objs[h].auto]
        return new[0] if new else None

    def _stack_viommu(
        self, data: st.DataObject, parts: list[bool], dev: int, nest_parent: dict[str, Any]
    ) -> int | None:
        """A nest parent (made with the tier's ``nest_parent`` arguments when ``parts[0]``,
        else an existing one) and a vIOMMU over it (made when ``parts[1]``, else an
        existing one); the vIOMMU's handle, or None when there is none."""
        m = self.model
        parent: int | None = None
        if parts[0]:
            ioas = self._pick(data, "ioas", "IOAS", stale=False)
            pred = m.predict("hwpt_alloc", dev=dev, pt=ioas, **nest_parent)
            parent = self._made("stack:nest_parent", pred)
        elif parents := [h for h in m.handles("HWPT_PAGING", alive=True)
                         if m.objs[h].nest_parent]:  # fmt: skip
            parent = data.draw(st.sampled_from(parents), "parent")
        if parent is not None and parts[1]:
            return self._made("stack:viommu", m.predict("viommu_alloc", dev=dev, hwpt=parent))
        if viommus := m.handles("VIOMMU", alive=True):
            return data.draw(st.sampled_from(viommus), "viommu")
        return None

    def _known_bug(self, handle: int) -> bool:
        """Whether destroying ``handle`` walks into a kernel bug a subclass steers around."""
        return False


class NestingMachine(CommonRules):
    """Tier 1: the nesting uAPI on the IOMMUFD_TEST mock."""

    #: steer around the kernel bugs this fuzzer found (``_known_bug``), so that runs go on
    #: finding new things; False lets the rules walk into them again
    avoid_known_bugs: ClassVar[bool] = True

    def _known_bug(self, handle: int) -> bool:
        """Destroying a mock device with a PASID attached (or closing the iommufd then):
        the model predicts success, and the 7.3 kernel WARNs in iommufd_device_unbind
        (iommufd_selftest_destroy detaches IOMMU_NO_PASID only; the PASID attach's user
        reference on the device makes the unbind's destroy fail).  Found by this fuzzer."""
        obj = self.model.objs[handle]
        return self.avoid_known_bugs and obj.kind == "DEVICE" and obj.alive and bool(obj.pasids)

    def teardown(self) -> None:
        """Detach every PASID before the example's iommufd closes: closing with a PASID
        attached hits the same kernel WARN as destroying its device (``_known_bug``)."""
        if self.started and not self.failed and self.avoid_known_bugs:
            for dev in self.model.live("DEVICE"):
                for pasid in sorted(dev.pasids):
                    pred = self.model.predict("pasid_detach", dev=dev.handle, pasid=pasid)
                    self._do("teardown:pasid_detach", pred)
        super().teardown()

    @invariant()
    def attachments_are_live(self) -> None:
        """Model self-check: every live device is attached to a live HWPT."""
        for dev in self.model.live("DEVICE"):
            assert dev.attached is not None and dev.attached.alive, dev

    # --- devices ------------------------------------------------------------------

    @precondition(lambda self: self._has("IOAS") and len(self.model.live("DEVICE")) < 4)
    @rule(target=devices, data=st.data(), flags=st.sampled_from(["", "", *DEVICE_FLAGS]))
    def mock_device(self, data: st.DataObject, flags: str) -> Any:
        pt = self._pick(data, "pt", "IOAS", "HWPT_PAGING", "HWPT_NESTED")
        pred = self.model.predict("mock_device", pt=pt, flags=flags)
        return self._created("mock_device", pred)

    @precondition(lambda self: self._has("DEVICE"))
    @rule(data=st.data())
    def replace(self, data: st.DataObject) -> None:
        dev = self._pick(data, "dev", "DEVICE")
        pt = self._pick(data, "pt", "IOAS", "HWPT_PAGING", "HWPT_NESTED")
        self._do("replace", self.model.predict("replace", dev=dev, pt=pt))

    @rule(dev=devices, pt=st.one_of(ioases, hwpts, viommus, vdevices, queues, devices))
    def replace_any(self, dev: int, pt: int) -> None:
        self._do("replace_any", self.model.predict("replace", dev=dev, pt=pt))

    # --- HWPTs --------------------------------------------------------------------

    @precondition(lambda self: self._has("DEVICE") and self._has("IOAS"))
    @rule(
        target=hwpts,
        data=st.data(),
        nest_parent=st.booleans(),
        with_fault=st.booleans(),
        dirty=st.booleans(),
        pasid=st.booleans(),
    )
    def hwpt_paging(
        self, data: st.DataObject, nest_parent: bool, with_fault: bool, dirty: bool, pasid: bool
    ) -> Any:
        dev = self._pick(data, "dev", "DEVICE")
        ioas = self._pick(data, "ioas", "IOAS")
        fault = self._pick(data, "fault", "FAULT") if with_fault and self._has("FAULT") else -1
        pred = self.model.predict(
            "hwpt_alloc", dev=dev, pt=ioas, nest_parent=nest_parent, data="none", fault=fault,
            dirty=dirty, pasid=pasid,
        )  # fmt: skip
        return self._created("hwpt_paging", pred)

    @precondition(lambda self: self._has("DEVICE") and self._has("HWPT_PAGING", "VIOMMU"))
    @rule(
        target=hwpts,
        data=st.data(),
        kind=st.sampled_from(["valid", "valid", "valid", *DATA_KINDS]),
        with_fault=st.integers(0, 3),
        pasid=st.booleans(),
    )
    def hwpt_nested(self, data: st.DataObject, kind: str, with_fault: int, pasid: bool) -> Any:
        dev = self._pick(data, "dev", "DEVICE")
        parent = self._pick(data, "nest parent", "HWPT_PAGING", "VIOMMU")
        fault = -1
        if with_fault == 0 and self._has("FAULT"):
            fault = self._pick(data, "fault", "FAULT")
        pred = self.model.predict(
            "hwpt_alloc", dev=dev, pt=parent, nest_parent=False, data=kind, fault=fault,
            pasid=pasid,
        )  # fmt: skip
        return self._created("hwpt_nested", pred)

    @rule(
        target=hwpts,
        dev=st.one_of(devices, ioases),
        pt=st.one_of(vdevices, queues, devices, hwpts, viommus),
        kind=st.sampled_from(DATA_KINDS),
        nest_parent=st.booleans(),
        fault=st.one_of(st.just(-1), queues, hwpts),
        dirty=st.booleans(),
    )
    def hwpt_alloc_any(
        self, dev: int, pt: int, kind: str, nest_parent: bool, fault: int, dirty: bool
    ) -> Any:
        pred = self.model.predict(
            "hwpt_alloc", dev=dev, pt=pt, data=kind, nest_parent=nest_parent, fault=fault,
            dirty=dirty,
        )  # fmt: skip
        return self._created("hwpt_alloc_any", pred)

    # --- a nesting stack in one rule (deep states are otherwise rare) -----------------

    @precondition(lambda self: self._has("DEVICE") and self._has("IOAS"))
    @rule(
        data=st.data(),
        choices=st.lists(st.integers(0, 3), min_size=7, max_size=7),
        virt_id=st.integers(0, 3),
        depth=st.sampled_from([1, 2, 4]),
    )
    def nesting_stack(
        self, data: st.DataObject, choices: list[int], virt_id: int, depth: int
    ) -> None:
        """Nest parent, vIOMMU, vDEVICE, vEVENTQ, nested HWPT, attach, vEVENT and read:
        each taken with probability 3/4 (0 turns it off: where the shrinker goes)."""
        parts = [c != 0 for c in choices]
        m = self.model
        dev = self._pick(data, "dev", "DEVICE", stale=False)
        made = self._made
        viommu = self._stack_viommu(data, parts, dev, {"nest_parent": True, "data": "none"})
        if viommu is None:
            return
        if parts[2]:
            made(
                "stack:vdevice",
                m.predict("vdevice_alloc", viommu=viommu, dev=dev, virt_id=virt_id),
            )
        if parts[3]:
            made("stack:veventq", m.predict("veventq_alloc", viommu=viommu, depth=depth))
        if parts[4]:
            nested = made(
                "stack:nested",
                m.predict("hwpt_alloc", dev=dev, pt=viommu, data="valid"),
            )
            if nested is not None and parts[5]:
                self._do("stack:attach", m.predict("replace", dev=dev, pt=nested))
        if parts[6]:
            self._do("stack:vevent", m.predict("trigger_vevent", dev=dev))
            queue = m.objs[viommu].veventq
            if queue is not None and queue.fd_open:
                self._do("stack:read", m.predict("read_vevents", queue=queue.handle))

    # --- vIOMMU -------------------------------------------------------------------

    @precondition(lambda self: self._has("DEVICE") and self._has("HWPT_PAGING"))
    @rule(target=viommus, data=st.data())
    def viommu_alloc(self, data: st.DataObject) -> Any:
        dev = self._pick(data, "dev", "DEVICE")
        hwpt = self._pick(data, "nest parent", "HWPT_PAGING")
        pred = self.model.predict("viommu_alloc", dev=dev, hwpt=hwpt)
        return self._created("viommu_alloc", pred)

    @precondition(lambda self: self._has("VIOMMU"))
    @rule(target=queues, data=st.data(), depth=st.sampled_from([1, 2, 4, 0]))
    def veventq_alloc(self, data: st.DataObject, depth: int) -> Any:
        viommu = self._pick(data, "viommu", "VIOMMU")
        pred = self.model.predict("veventq_alloc", viommu=viommu, depth=depth)
        return self._created("veventq_alloc", pred)

    @rule(
        viommu=st.one_of(viommus, hwpts, ioases, devices),
        dev=st.one_of(devices, hwpts),
        virt_id=st.integers(0, 3),
        depth=st.sampled_from([1, 0, VEVENTQ_MAX_DEPTH + 1]),
    )
    def viommu_objects_any(self, viommu: int, dev: int, virt_id: int, depth: int) -> None:
        """vIOMMU-side allocations with IDs of any type, live or stale."""
        pred = self.model.predict("vdevice_alloc", viommu=viommu, dev=dev, virt_id=virt_id)
        self._created("viommu_objects_any", pred)
        pred = self.model.predict("veventq_alloc", viommu=viommu, depth=depth)
        self._created("viommu_objects_any", pred)
        pred = self.model.predict("viommu_alloc", dev=dev, hwpt=viommu)
        self._created("viommu_objects_any", pred)

    # --- invalidation -------------------------------------------------------------

    @precondition(lambda self: self._has("HWPT_NESTED", "VIOMMU"))
    @rule(
        data=st.data(),
        entry=st.sampled_from(["one", "one", "all", *ENTRY_KINDS]),
        index=st.integers(0, 3),
        matching=st.integers(0, 5),
    )
    def invalidate(self, data: st.DataObject, entry: str, index: int, matching: int) -> None:
        obj = self._pick(data, "target", "HWPT_NESTED", "VIOMMU")
        target = self.model.objs[obj]
        data_type = "viommu" if target.kind == "VIOMMU" else "hwpt"
        if not matching:
            data_type = data.draw(st.sampled_from(["hwpt", "viommu", "badtype"]), "data type")
        virt_ids = sorted(target.vdevs) or [0]
        virt_id = data.draw(st.sampled_from([*virt_ids, 0, 3]), "virt_id")
        pred = self.model.predict(
            "invalidate", target=obj, data_type=data_type, entry=entry, index=index,
            virt_id=virt_id,
        )  # fmt: skip
        self._do("invalidate", pred)

    @rule(
        obj=st.one_of(hwpts, viommus, ioases, devices),
        data_type=st.sampled_from(["hwpt", "viommu", "badtype"]),
        entry=st.sampled_from(ENTRY_KINDS),
    )
    def invalidate_any(self, obj: int, data_type: str, entry: str) -> None:
        pred = self.model.predict("invalidate", target=obj, data_type=data_type, entry=entry)
        self._do("invalidate_any", pred)

    # --- events and faults --------------------------------------------------------

    @precondition(lambda self: self._has("DEVICE"))
    @rule(data=st.data())
    def trigger_vevent(self, data: st.DataObject) -> None:
        dev = self._pick(data, "dev", "DEVICE")
        self._do("trigger_vevent", self.model.predict("trigger_vevent", dev=dev))

    @precondition(lambda self: self._has("DEVICE"))
    @rule(data=st.data())
    def trigger_iopf(self, data: st.DataObject) -> None:
        dev = self._pick(data, "dev", "DEVICE")
        self._do("trigger_iopf", self.model.predict("trigger_iopf", dev=dev))

    # --- IOMMU_OPTION, GET_HW_INFO, IOVA ranges, dirty tracking, PASIDs -------------
    # (one rule per family, the call drawn inside: hypothesis picks rules uniformly, and
    # a rule per call made the deep states of nesting_stack too rare)

    @rule(data=st.data(), call=st.sampled_from(["option", "hw_info", "iova_ranges", "allow"]))
    def info(self, data: st.DataObject, call: str) -> None:
        """IOMMU_OPTION (RLIMIT_MODE mostly with object_id 0, HUGE_PAGES mostly on an
        IOAS), GET_HW_INFO, IOAS_IOVA_RANGES, IOAS_ALLOW_IOVAS."""
        m = self.model
        if call == "option":
            option = data.draw(st.sampled_from(["rlimit", "huge", "huge", *OPTIONS]), "option")
            action = data.draw(st.sampled_from(["get", "set", *OPTION_OPS]), "action")
            value = data.draw(st.sampled_from([0, 1, 0, 1, 2]), "value")
            target: int | None = -1
            zero_id = data.draw(st.integers(0, 9), "zero id")
            if (option == "rlimit") == (zero_id == 0) and m.handles():
                target = self._pick(data, "object", "IOAS")
            pred = m.predict("option", option=option, action=action, target=target, value=value)
            self._do("option", pred)
        elif call == "hw_info" and self._has("DEVICE"):
            dev = self._pick(data, "dev", "DEVICE")
            data_type = data.draw(st.sampled_from(HW_INFO_TYPES), "data type")
            self._do("hw_info", m.predict("hw_info", dev=dev, data_type=data_type))
        elif call == "iova_ranges" and self._has("IOAS"):
            ioas = self._pick(data, "ioas", "IOAS")
            capacity = data.draw(st.sampled_from([8, 8, 1, 0]), "capacity")
            self._do("iova_ranges", m.predict("iova_ranges", ioas=ioas, capacity=capacity))
        elif call == "allow" and self._has("IOAS"):
            ioas = self._pick(data, "ioas", "IOAS")
            kind = data.draw(st.sampled_from(["clear", "inside", "outside", *ALLOW_KINDS]), "kind")
            self._do("allow_iovas", m.predict("allow_iovas", ioas=ioas, kind=kind))

    @precondition(lambda self: self._has("HWPT_PAGING"))
    @rule(data=st.data(), call=st.sampled_from(["tracking", "mark", "bitmap", "bitmap"]))
    def dirty(self, data: st.DataObject, call: str) -> None:
        """SET_DIRTY_TRACKING, the mock's DIRTY marks, GET_DIRTY_BITMAP on a paging HWPT."""
        m = self.model
        hwpt = self._pick(data, "hwpt", "HWPT_PAGING")
        page = data.draw(st.integers(0, PAGES - 1), "page")
        npages = min(data.draw(st.integers(1, PAGES), "npages"), PAGES - page)
        if call == "tracking":
            enable = data.draw(st.sampled_from([True, True, False]), "enable")
            badflags = data.draw(st.integers(0, 9), "badflags") == 0
            pred = m.predict("set_dirty_tracking", hwpt=hwpt, enable=enable, badflags=badflags)
            self._do("set_dirty_tracking", pred)
        elif call == "mark":
            mask = data.draw(st.integers(1, (1 << npages) - 1), "mask") if npages else 0
            pred = m.predict("mark_dirty", hwpt=hwpt, page=page, npages=npages, mask=mask)
            self._do("mark_dirty", pred)
        else:
            shape = data.draw(st.sampled_from(["ok", "ok", "ok", *BITMAP_SHAPES]), "shape")
            no_clear = data.draw(st.booleans(), "no_clear")
            pred = m.predict(
                "dirty_bitmap", hwpt=hwpt, page=page, npages=npages, shape=shape,
                no_clear=no_clear,
            )  # fmt: skip
            self._do("dirty_bitmap", pred)

    @precondition(lambda self: self._has("DEVICE"))
    @rule(
        data=st.data(),
        call=st.sampled_from(["attach", "replace", "detach", "check"]),
        pasid=st.sampled_from(PASIDS),
    )
    def pasid(self, data: st.DataObject, call: str, pasid: int) -> None:
        """PASID_ATTACH / REPLACE / DETACH / CHECK_HWPT on a mock device."""
        m = self.model
        dev = self._pick(data, "dev", "DEVICE")
        if call in ("attach", "replace"):
            pt = self._pick(data, "pt", "HWPT_PAGING", "HWPT_NESTED", "IOAS")
            self._do(f"pasid_{call}", m.predict(f"pasid_{call}", dev=dev, pasid=pasid, pt=pt))
        elif call == "detach":
            self._do("pasid_detach", m.predict("pasid_detach", dev=dev, pasid=pasid))
        else:
            hwpt = -1
            if data.draw(st.integers(0, 3), "detached") and m.handles():
                hwpt = self._pick(data, "hwpt", "HWPT_PAGING", "HWPT_NESTED")
            self._do("pasid_check", m.predict("pasid_check", dev=dev, pasid=pasid, hwpt=hwpt))

    @rule(
        dev=st.one_of(devices, ioases, hwpts, viommus),
        obj=st.one_of(ioases, hwpts, viommus, queues, devices),
        enable=st.booleans(),
    )
    def new_calls_any(self, dev: int, obj: int, enable: bool) -> None:
        """GET_HW_INFO, dirty tracking and PASID calls with IDs of any type, live or stale."""
        m = self.model
        self._do("hw_info_any", m.predict("hw_info", dev=dev))
        self._do("dirty_any", m.predict("set_dirty_tracking", hwpt=obj, enable=enable))
        self._do("dirty_any", m.predict("mark_dirty", hwpt=obj, page=0, npages=1, mask=1))
        self._do("dirty_any", m.predict("dirty_bitmap", hwpt=obj, page=0, npages=PAGES))
        if m.objs[dev].kind == "DEVICE":
            self._do("pasid_any", m.predict("pasid_attach", dev=dev, pasid=1, pt=obj))
            self._do("pasid_any", m.predict("pasid_replace", dev=dev, pasid=1, pt=obj))
            self._do("pasid_any", m.predict("pasid_check", dev=dev, pasid=1, hwpt=obj))

    @precondition(lambda self: self._has("DEVICE") and self._has("IOAS"))
    @rule(
        data=st.data(),
        small=st.booleans(),
        areas=st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 3)), max_size=3),
        marks=st.lists(st.integers(0, (1 << PAGES) - 1), min_size=1, max_size=2),
        no_clear=st.booleans(),
    )
    def dirty_stack(
        self,
        data: st.DataObject,
        small: bool,
        areas: list[tuple[int, int]],
        marks: list[int],
        no_clear: bool,
    ) -> None:
        """Dirty tracking in one rule: (large pages off,) a dirty HWPT, maps, enable,
        marks and bitmap reads of all 16 pages (a second read: what the first cleared)."""
        m = self.model
        dev = self._pick(data, "dev", "DEVICE", stale=False)
        ioas = self._pick(data, "ioas", "IOAS", stale=False)
        if small:
            self._do("dstack:huge", m.predict("option", option="huge", action="set", target=ioas))
        before = m._next
        self._do("dstack:hwpt", m.predict("hwpt_alloc", dev=dev, pt=ioas, dirty=True))
        new = [h for h in range(before, m._next) if m.objs[h].kind == "HWPT_PAGING"]
        if not new:
            return
        hwpt = new[0]
        for page, npages in areas:
            npages = min(npages, PAGES - page)
            self._do("dstack:map", m.predict("map", ioas=ioas, page=page, npages=npages))
        self._do("dstack:enable", m.predict("set_dirty_tracking", hwpt=hwpt, enable=True))
        for mask in marks:
            pred = m.predict("mark_dirty", hwpt=hwpt, page=0, npages=PAGES, mask=mask)
            self._do("dstack:mark", pred)
        for _ in range(2):
            pred = m.predict("dirty_bitmap", hwpt=hwpt, page=0, npages=PAGES, no_clear=no_clear)
            self._do("dstack:bitmap", pred)

    @precondition(lambda self: self._has("DEVICE") and len(self.model.live("DEVICE")) < 6)
    @rule(
        data=st.data(),
        choices=st.lists(st.integers(0, 3), min_size=6, max_size=6),
        pasid=st.sampled_from(PASIDS),
    )
    def pasid_stack(self, data: st.DataObject, choices: list[int], pasid: int) -> None:
        """PASID in one rule: two HWPTs (PASID-compatible or not), a PASID-capable mock
        device on the first, a PASID attached to the second, checked, its HWPT's destroy
        refused, replaced, detached: each part taken with probability 3/4 (0 turns it off).
        (Destroying the device instead of detaching hits a known kernel WARN: see
        ``_known_bug``.)"""
        parts = [c != 0 for c in choices]
        m = self.model
        dev = self._pick(data, "dev", "DEVICE", stale=False)
        ioas = self._pick(data, "ioas", "IOAS", stale=False)
        made: list[int] = []
        for i in range(2):
            before = m._next
            self._do("pstack:hwpt", m.predict("hwpt_alloc", dev=dev, pt=ioas, pasid=parts[i]))
            made += [h for h in range(before, m._next) if m.objs[h].kind == "HWPT_PAGING"]
        if len(made) < 2:
            return
        if parts[2]:
            before = m._next
            self._do("pstack:device", m.predict("mock_device", pt=made[0], flags="pasid"))
            new = [h for h in range(before, m._next) if m.objs[h].kind == "DEVICE"]
            dev = new[0] if new else dev
        self._do("pstack:attach", m.predict("pasid_attach", dev=dev, pasid=pasid, pt=made[1]))
        self._do("pstack:check", m.predict("pasid_check", dev=dev, pasid=pasid, hwpt=made[1]))
        self._do("pstack:again", m.predict("pasid_attach", dev=dev, pasid=pasid, pt=made[0]))
        if parts[3]:
            self._do("pstack:destroy", m.predict("destroy", target=made[1]))
        if parts[4]:
            pred = m.predict("pasid_replace", dev=dev, pasid=pasid, pt=made[0])
            self._do("pstack:preplace", pred)
        if parts[5]:
            self._do("pstack:detach", m.predict("pasid_detach", dev=dev, pasid=pasid))
            self._do("pstack:check", m.predict("pasid_check", dev=dev, pasid=pasid))

    # --- IDs that name nothing ----------------------------------------------------

    @precondition(lambda self: self._has("DEVICE"))
    @rule(
        op=st.sampled_from(
            ["map", "unmap_all", "mock_device", "destroy", "viommu_alloc", "veventq_alloc",
             "invalidate", "trigger_vevent", "trigger_iopf", "hwpt_alloc", "replace",
             "option", "hw_info", "iova_ranges", "allow_iovas", "set_dirty_tracking",
             "mark_dirty", "dirty_bitmap", "pasid_attach", "pasid_detach"]
        ),
        dev=devices,
    )  # fmt: skip
    def bogus_id(self, op: str, dev: int) -> None:
        table: dict[str, dict[str, Any]] = {
            "map": {"ioas": None, "page": 0, "npages": 1},
            "unmap_all": {"ioas": None},
            "mock_device": {"pt": None},
            "destroy": {"target": None},
            "viommu_alloc": {"dev": dev, "hwpt": None},
            "veventq_alloc": {"viommu": None, "depth": 1},
            "invalidate": {"target": None, "data_type": "hwpt", "entry": "one"},
            "trigger_vevent": {"dev": None},
            "trigger_iopf": {"dev": None},
            "hwpt_alloc": {"dev": dev, "pt": None},
            "replace": {"dev": dev, "pt": None},
            "option": {"option": "huge", "action": "get", "target": None},
            "hw_info": {"dev": None},
            "iova_ranges": {"ioas": None},
            "allow_iovas": {"ioas": None, "kind": "inside"},
            "set_dirty_tracking": {"hwpt": None, "enable": True},
            "mark_dirty": {"hwpt": None, "page": 0, "npages": 1, "mask": 1},
            "dirty_bitmap": {"hwpt": None, "page": 0, "npages": 1},
            "pasid_attach": {"dev": dev, "pasid": 1, "pt": None},
            "pasid_detach": {"dev": None, "pasid": 1},
        }
        args = table[op]
        self._created("bogus_id", self.model.predict(op, **args))


def make_machine(
    run: Run, rules: type[FuzzMachine] = NestingMachine, **attrs: Any
) -> type[FuzzMachine]:
    """``rules`` bound to ``run`` and class attributes ``attrs`` (a tier's facts);
    hypothesis instantiates the class once per example."""
    return type(rules.__name__, (rules,), {"fuzz_run": run, **attrs})
