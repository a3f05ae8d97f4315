"""Mutation tests: break the thing a headline check is about; the verdict must FAIL on that row.

Tier 2, SMMUv3 (arm64, TCG): one guest with the IORT override serves every case.  Each case
first runs its scenario unmutated on that guest (the baseline must PASS, so the failure
below is the mutation's doing), then applies one mutation inside the agent
(``harness.scenarios.guest.mutations``), runs the scenario again and asserts that the
verdict fails and that the row named in docs/MUTATIONS.md is among its failures.  The
table there and ``CASES`` here are the same list (a unit test keeps them in step).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.pytest_plugin import kvm_skip_reason, qemu_for

pytestmark = [pytest.mark.tier2, pytest.mark.smmuv3, pytest.mark.arm64]


@dataclass(frozen=True)
class MutationCase:
    """A mutation, the scenario (and params) it is tried on, and the row it must trip."""

    mutation: str
    scenario: str
    row: str
    params: Mapping[str, Any] = field(default_factory=dict)


ONE_INVALIDATION = {"cases": ["tlbi-nh-va"]}
ONE_BINDING = {"cases": [{"kind": "s1", "label": "s1-4k-low", "granule": 4096,
                          "iova": 0x10_0000, "asid": 1}]}  # fmt: skip

CASES = (
    MutationCase(
        "invalidate-noop",
        "smmuv3-invalidation",
        "tlbi-nh-va: DMA after the invalidation reaches page B",
        ONE_INVALIDATION,
    ),
    MutationCase(
        "dma-flip-byte",
        "smmuv3-invalidation",
        "tlbi-nh-va: DMA before the change reaches page A",
        ONE_INVALIDATION,
    ),
    MutationCase(
        "vste-wrong-cd-pointer",
        "smmuv3-cd-binding",
        "s1-4k-low: DMA IOVA -> S1 -> IPA -> S2 -> memory, bytes",
        ONE_BINDING,
    ),
    MutationCase(
        "veventq-drop-record",
        "smmuv3-fault-rings",
        "vEVENTQ (translation, permission, bad CD): no loss, duplicates, disorder or mismatch",
    ),
    MutationCase(
        "kernel-warn",
        "smmuv3-invalidation",
        "guest kernel log since the scenario began",
        ONE_INVALIDATION,
    ),
)


@pytest.fixture(scope="module")
def smmu_guest(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One arm64 guest (virt + SMMUv3 stage=nested, IORT override, edu) for every case."""
    from harness.artifacts import new_artifacts_dir
    from harness.errors import PrerequisiteError
    from harness.guest import Guest
    from harness.qemu.probe import MissingCapabilityError
    from harness.scenarios.smmuv3 import prepare_smmuv3

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("arm64", accel):
        pytest.skip(reason)
    qemu = qemu_for(request.config.getoption("qemu") or [], "arm64")
    try:
        prepared = prepare_smmuv3("smmuv3-invalidation", qemu=qemu, accel=accel, override=True)
    except (MissingCapabilityError, PrerequisiteError) as exc:
        pytest.skip(str(exc))
    artifacts = new_artifacts_dir("mutations-arm64")
    guest = Guest(
        prepared.machine,
        artifacts,
        ready_marker=prepared.ready_marker,
        qemu=prepared.binary,
        name="mutations",
    )
    with guest:
        yield guest


def _run(guest: Any, case: MutationCase, mutation: str | None) -> Any:
    from harness.scenarios.base import get
    from harness.scenarios.runner import resolve_params, run_on_guest

    scenario = get(case.scenario)
    params = resolve_params(scenario, case.params, seed=1)
    if mutation is None:
        return run_on_guest(scenario, guest, params)
    try:
        return run_on_guest(
            scenario, guest, params, on_ready=lambda g: g.call("mutations.apply", name=mutation)
        )
    finally:
        guest.call("mutations.revert")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.mutation)
def test_mutation_fails_the_verdict_on_its_row(smmu_guest: Any, case: MutationCase) -> None:
    baseline = _run(smmu_guest, case, None)
    print(baseline.table())
    assert baseline.passed, f"baseline must pass first: {baseline.summary()}"
    assert any(c.name.startswith(case.row) for c in baseline.checks), "row not in the verdict"

    mutated = _run(smmu_guest, case, case.mutation)
    print(mutated.table())
    assert not mutated.passed, f"{case.mutation}: the verdict still PASSES"
    tripped = [c.name for c in mutated.failures]
    assert any(name.startswith(case.row) for name in tripped), (
        f"{case.mutation}: expected row {case.row!r} to fail; failed rows: {tripped}"
    )
