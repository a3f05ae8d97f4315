"""``fuzz-replay`` (tier 1) and ``fuzz-replay-smmuv3`` (tier 2): registered scenarios that
replay a shrunk fuzz example, and whose machines the fuzzer boots.

A fuzz failure's repro bundle is an ordinary scenario bundle of one of them whose
params hold the steps (``{"op", "args"}`` with the kernel IDs they used), what the model
predicted for each, and the planted bug if any; so ``harness repro BUNDLE`` (and
``--keep``) replay it unchanged.  The verdict has one effect row per step (the model's
prediction, recorded when the fuzzer ran, against the kernel's answer now), the queue-fd
rows, and the runner's kernel-health row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.guest import Guest
from harness.scenarios import smmuv3
from harness.scenarios.base import EFFECT, Check, GuestSpec, Verdict, scenario
from harness.scenarios.runner import prepare_hook
from harness.scenarios.tier1 import ARCHES, preflight

NAME = "fuzz-replay"
NAME_SMMUV3 = "fuzz-replay-smmuv3"
#: tier 1: no vIOMMU, no device (the mock provides both)
SPEC = GuestSpec(viommu=None, devices=())
#: tier 2: QEMU's SMMUv3 (nested) with edu, the IORT claiming CANWBS (as smmuv3-* scenarios)
prepare_hook(NAME_SMMUV3)(smmuv3.apply_iort_override)


def step_label(index: int, step: Mapping[str, Any]) -> str:
    """``step 3: replace(dev=5, pt=2)``."""
    args = ", ".join(f"{k}={v}" for k, v in step["args"].items())
    return f"step {index}: {step['op']}({args})"


def judge(
    steps: Sequence[Mapping[str, Any]],
    answer: Mapping[str, Any],
    open_fds: int,
    verdict: Verdict | None = None,
) -> Verdict:
    """Rows comparing each recorded prediction with the replayed answer."""
    verdict = verdict or Verdict(NAME)
    answers = list(answer.get("answers", []))
    for i, (recorded, got) in enumerate(zip(steps, answers, strict=False)):
        expect = dict(recorded["expect"])
        seen = {k: got.get(k) for k in expect}
        verdict.add(Check.effect(step_label(i, recorded["step"]), expect, seen))
    if len(answers) != len(steps):
        verdict.add(Check.effect("steps answered", len(steps), len(answers)))
    verdict.add(
        Check("queue fds open at the end (from /proc)", open_fds, answer.get("queue_fds"),
              answer.get("queue_fds") == open_fds, kind=EFFECT)
    )  # fmt: skip
    left = answer.get("queue_fds_after_close")
    verdict.add(Check("queue fds left after closing them", 0, left, left == 0, kind=EFFECT))
    verdict.facts["steps"] = len(steps)
    return verdict


@scenario(NAME, tier=1, arches=ARCHES, guest=SPEC, defaults={"steps": [], "plant": None})
def fuzz_replay(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Replay a shrunk fuzz example (params: steps with predictions, plant, open_fds)."""
    preflight(guest)
    steps = list(params.get("steps") or [])
    answer = guest.call(
        "fuzz.run", timeout=600, steps=[s["step"] for s in steps], plant=params.get("plant")
    )
    verdict = judge(steps, answer, int(params.get("open_fds", 0)))
    verdict.facts["failure"] = params.get("failure", "")
    return verdict


@scenario(
    NAME_SMMUV3, tier=2, arches=("arm64",), guest=lambda arch: smmuv3.SPEC, viommu="smmuv3",
    defaults={"steps": [], "plant": None},
)  # fmt: skip
def fuzz_replay_smmuv3(guest: Guest, params: Mapping[str, Any]) -> Verdict:
    """Replay a shrunk tier-2 fuzz example on the edu device's VFIO cdev."""
    verdict = Verdict(NAME_SMMUV3)
    bound = smmuv3.bind_edu(guest, verdict)
    if bound is None:
        return verdict
    steps = list(params.get("steps") or [])
    answer = guest.call(
        "fuzz_smmuv3.run", timeout=600, steps=[s["step"] for s in steps], cdev=bound[1],
        plant=params.get("plant"),
    )  # fmt: skip
    judge(steps, answer, int(params.get("open_fds", 0)), verdict)
    verdict.facts["failure"] = params.get("failure", "")
    return verdict


def get_registered(name: str = NAME) -> Any:
    """A registered replay scenario (this module registers both on import)."""
    from harness.scenarios.base import REGISTRY

    return REGISTRY[name]
