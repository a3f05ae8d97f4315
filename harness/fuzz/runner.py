"""Run the fuzzer on a booted guest until a budget ends, or until it finds something.

``fuzz(executor, budget=..., seed=...)`` runs hypothesis in chunks of examples (each
chunk seeded ``seed + i``, so a run is repeatable) with its example database on disk
(a rerun replays saved failures first, so a run can be resumed), prints a progress line
at least every 10 s, and returns a ``FuzzResult``: coverage, examples, and the shrunk
failure if one was found.  ``GuestExecutor`` sends the steps to the guest half
``harness.scenarios.guest.fuzz``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import get_state_machine_test

from harness.agent.client import AgentRemoteError
from harness.fuzz.coverage import Coverage, contract_gaps
from harness.fuzz.reduce import reduce_trace
from harness.fuzz.rules import (
    BudgetSpent,
    FuzzFailureError,
    FuzzMachine,
    GuestLostError,
    NestingMachine,
    Run,
    make_machine,
)
from harness.guest import Guest

#: steps per hypothesis example (each example is one fresh iommufd)
STEPS_PER_EXAMPLE = 60
#: examples per hypothesis run (the budget is checked between runs)
CHUNK = 1000


class HardwareObserver(Protocol):
    """What the host reads of the vIOMMU for a tier (``harness.fuzz.smmuv3_hw``)."""

    def after_step(self, wire: dict[str, Any], observed: dict[str, Any]) -> None: ...

    def after_example(self) -> dict[str, Any]: ...


class GuestExecutor:
    """Steps go to ``fuzz.step`` in the guest; a lost guest makes ``end`` a no-op.

    ``cdev`` (tier 2) is the VFIO cdev each session binds; ``hardware`` adds what the host
    reads of the vIOMMU to a step's answer and to ``end()["smmu"]``.
    """

    def __init__(
        self,
        guest: Guest,
        plant: str | None = None,
        timeout: float = 60.0,
        *,
        cdev: str | None = None,
        hardware: HardwareObserver | None = None,
    ) -> None:
        self.guest = guest
        self.plant = plant
        self.timeout = timeout
        self.cdev = cdev
        self.hardware = hardware
        self.lost = False

    def begin(self) -> None:
        if self.cdev is None:
            self.guest.call("fuzz.begin", timeout=self.timeout, plant=self.plant)
        else:
            self.guest.call(
                "fuzz_smmuv3.begin", timeout=self.timeout, cdev=self.cdev, plant=self.plant
            )

    def step(self, wire: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self.guest.call(
                "fuzz.step", timeout=self.timeout, op=wire["op"], args=wire["args"]
            )
        except AgentRemoteError:
            raise  # the guest answered: an executor exception, not a lost guest
        except Exception:
            self.lost = True
            raise
        if self.hardware is not None:
            self.hardware.after_step(wire, result)
        return result

    def end(self) -> dict[str, Any]:
        if self.lost:
            return {}
        result: dict[str, Any] = self.guest.call("fuzz.end", timeout=self.timeout)
        if self.hardware is not None:
            result["smmu"] = self.hardware.after_example()
        return result


@dataclass
class FuzzResult:
    """What a run did and found."""

    seed: int
    budget_s: float
    elapsed_s: float
    examples: int
    coverage: Coverage
    failure: FuzzFailureError | None = None
    lost: GuestLostError | None = None
    error: str = ""
    shrink_s: float = 0.0
    chunks: int = 0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.failure is not None or self.lost is not None or bool(self.error)

    def summary(self) -> dict[str, Any]:
        steps = self.coverage.steps
        return {
            "seed": self.seed,
            "budget_s": self.budget_s,
            "elapsed_s": round(self.elapsed_s, 1),
            "examples": self.examples,
            "steps": steps,
            "steps_per_s": round(steps / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "found": self.found,
            "failure": str(self.failure) if self.failure else None,
            "guest_lost": str(self.lost) if self.lost else None,
            "error": self.error or None,
            "shrink_s": round(self.shrink_s, 1),
            **self.coverage.to_json(),
            "contract": contract_gaps(self.coverage),
            **self.facts,
        }


def fuzz(
    executor: Any,
    *,
    budget: float,
    seed: int,
    database: Path | None = None,
    steps: int = STEPS_PER_EXAMPLE,
    chunk: int = CHUNK,
    log: Callable[[str], None] = print,
    progress_every: float = 10.0,
    shrink_limit: float = 120.0,
    reduce_limit: float | None = None,
    rules: type[FuzzMachine] = NestingMachine,
    facts: dict[str, Any] | None = None,
) -> FuzzResult:
    """Examples until ``budget`` seconds have passed or one fails (then shrunk).

    A failure is shrunk by hypothesis for at most ``shrink_limit`` seconds, then reduced
    by delta debugging in the guest for at most ``reduce_limit`` (default: the same).
    ``rules`` is the tier's state machine, ``facts`` its class attributes (tier 2: the
    SMMU's ID registers).
    """
    run = Run(executor, log=log, progress_every=progress_every)
    run.deadline = time.monotonic() + budget
    run.shrink_limit = shrink_limit
    machine = make_machine(run, rules, **(facts or {}))
    db = DirectoryBasedExampleDatabase(str(database)) if database is not None else None
    conf = settings(
        max_examples=chunk,
        stateful_step_count=steps,
        deadline=None,
        database=db,
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
        phases=[Phase.reuse, Phase.generate, Phase.shrink],
        print_blob=False,
        verbosity=hypothesis.Verbosity.quiet,
    )
    t0 = time.monotonic()
    result = FuzzResult(seed, budget, 0.0, 0, run.coverage)
    i = 0
    while time.monotonic() - t0 < budget:
        test = get_state_machine_test(machine, settings=conf)
        test = hypothesis.seed(seed + i)(test)
        i += 1
        try:
            test()
        except BudgetSpent:
            result.failure = run.failure  # when shrinking was cut short, the best so far
            break
        except FuzzFailureError:
            result.failure = run.failure
        except GuestLostError as lost:
            result.lost = lost
        except Exception as exc:  # hypothesis' own complaints (flaky, unsatisfiable)
            if run.stopped:  # hypothesis reports the BudgetSpent it swallowed as "flaky"
                result.failure = run.failure
                break
            result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if run.failure is not None:
                result.failure = run.failure
        if result.found:
            break
    result.chunks = i
    if result.failure is not None and result.failure.trace:
        t1 = time.monotonic()
        old = result.failure
        before = len(old.trace)
        reduced = reduce_trace(
            executor,
            old.trace,
            budget=shrink_limit if reduce_limit is None else reduce_limit,
            new_model=machine.new_model,
            splat=old.splat_title if old.failing_step is None else "",
        )
        if reduced is not old.trace:
            last = reduced[-1]
            what = old.what
            if last.get("mismatch"):
                what = f"step {len(reduced) - 1} ({last['step']['op']}): {last['mismatch']}"
            fds = int(last.get("open_fds", old.open_fds))
            result.failure = FuzzFailureError(what, reduced, old.splat, fds, old.splat_title)
        result.facts.update(
            hypothesis_shrunk_steps=before,
            reduced_steps=len(result.failure.trace),
            reduce_s=round(time.monotonic() - t1, 1),
        )
    result.elapsed_s = time.monotonic() - t0
    if run.first_failure_at is not None:
        result.shrink_s = time.monotonic() - run.first_failure_at
    result.examples = run.examples
    run.progress(force=True)
    return result
