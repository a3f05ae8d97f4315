"""Run a matrix's variants as one avocado job (avocado's Python Job API, offline).

The suite is the avocado-instrumented test ``tests/qualification/avocado_scenarios.py``
with one dict variant per matrix variant (avocado's built-in ``dict_variants``
varianter: no YAML-to-mux plugin needed).  Avocado writes its JSON, xUnit, TAP and
HTML (result-html plugin) results into the job directory; ``harness.qualify.report``
adds the per-variant qualification report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness.errors import ConfigError
from harness.qemu.lifetime import owner_environment
from harness.qemu.rundir import sweep
from harness.qualify.matrix import Variant

WRAPPER = Path("tests") / "qualification" / "avocado_scenarios.py"
TEST_REFERENCE = "ScenarioVariant.test"


def wrapper_path() -> Path:
    """The avocado wrapper test in this checkout."""
    path = Path(harness.__file__).resolve().parent.parent / WRAPPER
    if not path.is_file():
        raise ConfigError(f"avocado wrapper {path} not found (run from a source checkout)")
    return path


def job_config(
    variants: Sequence[Variant], results_dir: Path, *, parallel: int = 1
) -> dict[str, Any]:
    """The avocado job configuration for ``variants``."""
    return {
        "resolver.references": [f"{wrapper_path()}:{TEST_REFERENCE}"],
        "run.dict_variants": [
            {"id": v.id, "timeout": v.timeout, "variant": json.dumps(v.to_json())} for v in variants
        ],
        "run.dict_variants.variant_id_keys": ["id"],
        "run.results_dir": str(results_dir),
        "run.max_parallel_tasks": parallel,
        "job.run.result.html.enabled": True,
        "job.run.result.json.enabled": True,
        "job.run.result.xunit.enabled": True,
        "job.run.result.xunit.job_name": "viommu-harness-qualification",
    }


@dataclass(frozen=True)
class JobOutcome:
    """Avocado's exit status and the job's results directory."""

    status: int
    logdir: Path


def run_job(variants: Sequence[Variant], results_dir: Path, *, parallel: int = 1) -> JobOutcome:
    """Run the avocado job; avocado prints its own progress.

    Sweeps what killed runs left first.  The test processes (avocado runner -> test) are
    told this process is their owner (``$VIOMMU_HARNESS_OWNER``): if it dies, even by
    SIGKILL, they kill themselves and their QEMUs (``lifetime.follow_owner``).
    """
    from avocado.core.job import Job

    sweep()
    results_dir.mkdir(parents=True, exist_ok=True)
    config = job_config(variants, results_dir, parallel=parallel)
    with owner_environment(), Job.from_config(job_config=config) as job:
        status = int(job.run())
        return JobOutcome(status, Path(job.logdir))
