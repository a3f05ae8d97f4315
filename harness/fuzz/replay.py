"""``fuzz-replay``: a registered scenario that replays a shrunk fuzz example.

A fuzz failure's repro bundle is an ordinary scenario bundle of this scenario whose
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
from harness.scenarios.base import EFFECT, Check, GuestSpec, Verdict, scenario
from harness.scenarios.tier1 import ARCHES, preflight

NAME = "fuzz-replay"
#: tier 1: no vIOMMU, no device (the mock provides both)
SPEC = GuestSpec(viommu=None, devices=())


def step_label(index: int, step: Mapping[str, Any]) -> str:
    """``step 3: replace(dev=5, pt=2)``."""
    args = ", ".join(f"{k}={v}" for k, v in step["args"].items())
    return f"step {index}: {step['op']}({args})"


def judge(steps: Sequence[Mapping[str, Any]], answer: Mapping[str, Any], open_fds: int) -> Verdict:
    """Rows comparing each recorded prediction with the replayed answer."""
    verdict = Verdict(NAME)
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


def get_registered() -> Any:
    """The registered ``fuzz-replay`` scenario (this module registers it on import)."""
    from harness.scenarios.base import REGISTRY

    return REGISTRY[NAME]
