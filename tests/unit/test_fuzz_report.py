"""What a fuzz failure leaves: the report names the failing step, the script compiles and
carries the steps, coverage compares with the errno-contract table (no guest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.commands.fuzz import parse_budget
from harness.errors import ConfigError
from harness.fuzz import reproducer
from harness.fuzz.coverage import Coverage, contract_gaps
from harness.fuzz.replay import judge, step_label
from harness.fuzz.rules import FuzzFailureError

pytestmark = pytest.mark.tier0

TRACE: list[dict[str, Any]] = [
    {"rule": "ioas_alloc", "step": {"op": "ioas_alloc", "args": {}},
     "expect": {"outcome": "ok"}, "got": {"outcome": "ok", "id": 1}},
    {"rule": "unmap_all", "step": {"op": "unmap_all", "args": {"ioas": 1}},
     "expect": {"outcome": "ok", "unmapped": 0}, "got": {"outcome": "ok", "unmapped": 2},
     "mismatch": "unmapped: expected 0, got 2"},
]  # fmt: skip


def failure() -> FuzzFailureError:
    return FuzzFailureError("step 1 (unmap_all): unmapped: expected 0, got 2", TRACE)


def test_report_names_the_failing_step(tmp_path: Path) -> None:
    written = reproducer.write(failure(), tmp_path, plant=None)
    report = json.loads(written["report"].read_text())
    assert report["failing_step"] == 1
    assert report["failing"] == {
        "label": "step 1: unmap_all(ioas=1)",
        "expected": {"outcome": "ok", "unmapped": 0},
        "got": {"outcome": "ok", "unmapped": 2},
    }
    assert "bundle" not in written  # no booted configuration given


def test_script_compiles_and_holds_the_steps(tmp_path: Path) -> None:
    script = reproducer.write(failure(), tmp_path, plant="p")["script"].read_text()
    compile(script, "fuzz-repro.py", "exec")
    steps = json.loads(script.split('r"""', 1)[1].split('"""', 1)[0])
    assert [s["op"] for s in steps] == ["ioas_alloc", "unmap_all"]
    assert steps[1]["expect"] == {"outcome": "ok", "unmapped": 0}
    assert "PLANT = 'p'" in script


def test_replay_verdict_fails_only_the_step_that_differs() -> None:
    steps = reproducer.steps_of(TRACE)
    answers = [s["got"] for s in TRACE]
    answer: dict[str, Any] = {"answers": answers, "queue_fds": 0, "queue_fds_after_close": 0}
    verdict = judge(steps, answer, 0)
    assert [c.name for c in verdict.failures] == [step_label(1, TRACE[1]["step"])]
    answers[1] = {"outcome": "ok", "unmapped": 0}
    assert judge(steps, answer, 0).passed


def test_coverage_against_the_contract() -> None:
    cov = Coverage()
    cov.record("destroy_any", "IOMMU_DESTROY", "ENOENT")
    cov.record("mock_device", "IOMMU_TEST_CMD(MOCK_DOMAIN)", "ENOENT")
    cov.example_ended()
    cov.record("ioas_alloc", "IOMMU_IOAS_ALLOC", "ok")
    assert cov.pairs == {("destroy_any", "mock_device"): 1}
    gaps = contract_gaps(cov)
    reached = {(r["ioctl"], r["errno"]) for r in gaps["reached"]}
    assert ("IOMMU_DESTROY", "ENOENT") in reached
    assert ("IOMMU_TEST_CMD", "ENOENT") in reached  # the op-qualified name counts
    assert ("IOMMU_IOAS_MAP", "EOVERFLOW") in {
        (r["ioctl"], r["errno"]) for r in gaps["never_reached"]
    }
    assert "IOMMU_IOAS_ALLOC" in gaps["ioctls_with_success"]


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("45", 45)])
def test_budget(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-1m", "0"])
def test_bad_budget_is_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_the_bundle_fails_the_row_the_replay_will_fail() -> None:
    """A step that disagreed fails that step's row; a kernel report at the end of the
    example the kernel-log row (``harness repro`` compares the failing rows by name)."""
    from harness.scenarios.runner import KERNEL_HEALTH

    step = {"step": {"op": "destroy", "args": {"id": 3}}, "expect": {"outcome": "ok"}}
    bad = {**step, "got": {"outcome": "EBUSY"}, "mismatch": "outcome: expected ok, got EBUSY"}
    row = reproducer.failed_row(FuzzFailureError("step 1 (destroy)", [step, bad]))
    assert (row.name, row.ok, row.got) == ("step 1: destroy(id=3)", False, {"outcome": "EBUSY"})
    title = "WARNING: drivers/iommu/iommufd/iommufd_private.h:241 at iommufd_device_unbind"
    warned = FuzzFailureError(f"kernel warning: {title}", [step], "[warning] ...", 0, title)
    row = reproducer.failed_row(warned)
    assert (row.name, row.ok, row.kind) == (KERNEL_HEALTH, False, "effect")
