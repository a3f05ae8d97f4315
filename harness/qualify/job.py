"""Run a matrix's variants as one avocado job (avocado's Python Job API, offline).

The suite is the avocado-instrumented test ``tests/qualification/avocado_scenarios.py``
with one dict variant per matrix variant (avocado's built-in ``dict_variants``
varianter: no YAML-to-mux plugin needed).  Avocado writes its JSON, xUnit, TAP and
HTML (result-html plugin) results into the job directory; ``harness.qualify.report``
adds the per-variant qualification report, and the job records what each of the
matrix's QEMUs can do (``qemu-capabilities.json``) for the report to compare.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
from harness.errors import ConfigError, HarnessError
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


def qemu_capabilities(variants: Sequence[Variant]) -> dict[str, dict[str, Any]]:
    """Label -> arch -> the probed capabilities of each QEMU the variants name.

    A QEMU that cannot be resolved or probed gets the error's text instead.
    """
    from harness.qemu.probe import probe, resolve_binary

    found: dict[str, dict[str, Any]] = {}
    for v in variants:
        per_arch = found.setdefault(v.qemu_label, {})
        if v.arch in per_arch:
            continue
        try:
            per_arch[v.arch] = probe(resolve_binary(v.arch, v.qemu)).to_json()
        except (HarnessError, OSError) as exc:
            per_arch[v.arch] = f"{type(exc).__name__}: {exc}"
    return found


def record_capabilities(variants: Sequence[Variant], logdir: Path) -> Path:
    """Write ``qemu-capabilities.json`` (see :func:`qemu_capabilities`) into ``logdir``."""
    from harness.qualify.report import CAPABILITIES_JSON

    path = logdir / CAPABILITIES_JSON
    path.write_text(json.dumps(qemu_capabilities(variants), indent=1, sort_keys=True) + "\n")
    return path


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
        logdir = Path(job.logdir)
    if len({v.qemu_label for v in variants}) > 1:
        record_capabilities(variants, logdir)  # probes are cached: quick after the run
    return JobOutcome(status, logdir)
