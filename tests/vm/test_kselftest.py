"""The kernel's own iommufd and VFIO selftests in harness guests (``harness kselftest``).

CI runs a representative subset: ``iommufd`` (the IOMMUFD_TEST mock) on x86_64 and
``vfio_pci_driver_test`` (real DMA by the selftests' igb driver through the vIOMMU) on
both arches, on arm64 as a ``harness qualify`` cell.  Every result must pass or be
listed in ``harness/kselftest/expected.toml``.  The whole matrix (both suites x every
vIOMMU configuration of both arches, ``tests/qualification/kselftest.yaml``) runs under
``tox -e nightly`` (the ``nightly`` marker: collected only with ``VIOMMU_NIGHTLY=1``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import PrerequisiteError
from harness.kselftest import expected as expected_results
from harness.kselftest.build import SelftestBuild, ensure_selftests
from harness.kselftest.expected import Judgement
from harness.kselftest.matrix import MATRIX, ViommuConfig, select
from harness.kselftest.runner import (
    KERNEL_ARGS,
    MEMORY_MB,
    BinaryRun,
    prepare_guest,
    run_binary,
)
from harness.kselftest.tap import TapResult

pytestmark = pytest.mark.tier2
WHOLE_MATRIX = Path(__file__).resolve().parents[1] / "qualification" / "kselftest.yaml"

ARCHES = [
    pytest.param("x86_64", marks=[pytest.mark.x86_64, pytest.mark.vtd]),
    pytest.param("arm64", marks=[pytest.mark.arm64, pytest.mark.smmuv3]),
]


def _build(arch: str) -> SelftestBuild:
    try:
        return ensure_selftests(arch)
    except PrerequisiteError as exc:
        pytest.skip(f"cannot build the {arch} selftests: {exc}")


def _boot(boot_guest: Any, config: ViommuConfig, vfio: bool) -> Any:
    return boot_guest(
        config.arch,
        config.kind,
        devices=("igb",) if vfio else (),
        viommu_options=config.options,
        memory_mb=MEMORY_MB,
        append=KERNEL_ARGS,
    )


def _run(
    guest: Any,
    build: SelftestBuild,
    config: ViommuConfig,
    binary: str,
    artifacts: Path,
    tests: tuple[str, ...] = (),
) -> BinaryRun:
    selection = select("all", [binary])
    facts = prepare_guest(guest, build, selection)
    env = {"VFIO_SELFTESTS_BDF": facts["igb"]} if "igb" in facts else {}
    (suite,) = selection.binaries
    run = BinaryRun(suite, binary, config)
    run_binary(
        guest, run, tests, env, expected_results.load(), lambda *_: None, artifacts / "tap", 1800
    )
    return run


def _assert_all_ok(run: BinaryRun, at_least: int) -> None:
    bad = [
        f"{r.name}: {r.outcome} {j.reason}"
        for r, j in zip(run.report.results, run.judgements, strict=True)
        if not j.ok
    ]
    assert run.lost is None, run.lost
    assert not bad, f"{len(bad)} unexpected results:\n" + "\n".join(bad[:30])
    assert run.report.counts()["pass"] >= at_least, run.report.counts()


@pytest.mark.x86_64
@pytest.mark.vtd
def test_iommufd_mock_suite_passes(
    boot_guest: Any, artifacts_dir: Path, record_property: Any
) -> None:
    config = MATRIX["x86_64"][0]
    build = _build("x86_64")
    guest = _boot(boot_guest, config, vfio=False)
    run = _run(guest, build, config, "iommufd", artifacts_dir)
    record_property("counts", str(run.report.counts()))
    record_property("wall_s", str(run.wall_s))
    _assert_all_ok(run, at_least=100)


#: CI's share of vfio_pci_driver_test (the whole binary takes 190-280 s under TCG, most of
#: it memcpy_storm; the nightly matrix runs it whole): igb DMA through the vIOMMU in the
#: iommufd and type1 modes, to a mapped and to an unmapped IOVA
DRIVER_TESTS = tuple(
    f"vfio_pci_driver_test.{mode}.{test}"
    for mode in ("iommufd", "vfio_type1_iommu")
    for test in ("memcpy_success", "memcpy_to_unmapped_iova")
)


def _assert_driver_dma(names: list[str]) -> None:
    """Real DMA by igb through the vIOMMU, in both kinds of container."""
    assert any(".iommufd." in n and "memcpy" in n for n in names), names
    assert any(".vfio_type1_iommu." in n for n in names), names


@pytest.mark.x86_64
@pytest.mark.vtd
def test_vfio_pci_driver_test_drives_igb_dma_through_the_viommu(
    boot_guest: Any, artifacts_dir: Path, record_property: Any
) -> None:
    config = MATRIX["x86_64"][0]
    build = _build("x86_64")
    guest = _boot(boot_guest, config, vfio=True)
    run = _run(guest, build, config, "vfio_pci_driver_test", artifacts_dir, DRIVER_TESTS)
    record_property("counts", str(run.report.counts()))
    record_property("wall_s", str(run.wall_s))
    _assert_driver_dma([r.name for r in run.report.results if r.outcome == "pass"])
    _assert_all_ok(run, at_least=len(DRIVER_TESTS))


def _qualify(matrix: Path, results: Path, *only: str) -> tuple[int, str, dict[str, Any]]:
    """``harness qualify`` on ``matrix``: exit status, output and ``qualification.json``."""
    argv = [sys.executable, "-m", "harness", "qualify", "--matrix", str(matrix),
            "--results", str(results), *(a for o in only for a in ("--only", o))]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=7200)
    (report,) = results.glob("job-*/qualification.json")
    return done.returncode, done.stdout + done.stderr, json.loads(report.read_text())


@pytest.mark.arm64
@pytest.mark.smmuv3
def test_qualify_runs_a_selftest_cell_and_tables_it(artifacts_dir: Path, tmp_path: Path) -> None:
    """The same share of ``vfio_pci_driver_test`` on arm64, as a qualification cell: the
    report's selftest table gives its counts, the variant passes."""
    _build("arm64")
    matrix = tmp_path / "kselftest.yaml"
    tests = ", ".join(f"'vfio_pci_driver_test:{t}'" for t in DRIVER_TESTS)
    matrix.write_text(
        "name: ci-kselftest\n"
        f"kselftest: {{suite: vfio, arches: [arm64], configs: [smmuv3-nested], tests: [{tests}]}}\n"
    )
    status, output, report = _qualify(matrix, artifacts_dir / "qualify")
    (row,) = report["variants"]
    assert status == 0, output[-3000:]
    assert row["id"] == "kselftest.arm64.smmuv3-nested" and row["status"] == "passed"
    (summary,) = row["kselftest"]
    assert summary["binary"] == "vfio_pci_driver_test"
    assert summary["counts"]["pass"] == len(DRIVER_TESTS), summary
    assert summary["counts"]["unexpected"] == 0 and not summary["lost"]
    line = next(x for x in output.splitlines() if x.startswith("vfio_pci_driver_test "))
    assert line.split()[1] == f"{len(DRIVER_TESTS)}/0/0", line
    names = [name for name, ok, _ in row["check_results"] if ok]
    _assert_driver_dma(names)


@pytest.mark.x86_64
@pytest.mark.vtd
@pytest.mark.kernel_reports_expected
def test_a_guest_that_wedges_mid_binary_keeps_the_finished_tests(
    boot_guest: Any, artifacts_dir: Path
) -> None:
    """Pause the VM (QMP ``stop``) after the first result: the run ends within the hang
    bound, with the finished tests kept and the running one an error naming the cause."""
    config = MATRIX["x86_64"][0]
    build = _build("x86_64")
    guest = _boot(boot_guest, config, vfio=True)
    selection = select("vfio", ["vfio_pci_driver_test"])
    facts = prepare_guest(guest, build, selection)
    run = BinaryRun("vfio", "vfio_pci_driver_test", config)
    stopped: list[float] = []

    def on_result(_run: BinaryRun, _result: TapResult, _judged: Judgement) -> None:
        if not stopped:
            stopped.append(time.monotonic())
            threading.Thread(target=guest.vm.qmp.execute, args=("stop",), daemon=True).start()

    run_binary(
        guest,
        run,
        (),
        {"VFIO_SELFTESTS_BDF": facts["igb"]},
        expected_results.load(),
        on_result,
        artifacts_dir / "tap",
        600,
    )
    assert stopped, "no test finished before the pause"
    waited = time.monotonic() - stopped[0]
    assert run.lost is not None and "paused" in run.lost.lower(), run.lost
    assert waited < guest.vm.hang_timeout + 15, waited
    finished = [r for r in run.report.results if r.outcome != "error"]
    assert finished and all(j.ok for j in run.judgements[: len(finished)])
    cut = [r for r in run.report.results if r.outcome == "error"]
    assert len(cut) == 1 and cut[0].reason == run.lost


@pytest.mark.slow
@pytest.mark.nightly
@pytest.mark.parametrize("arch", ARCHES)
def test_whole_matrix(artifacts_dir: Path, record_property: Any, arch: str) -> None:
    """Both suites in every vIOMMU configuration of ``arch`` (nightly), through
    ``harness qualify`` and ``tests/qualification/kselftest.yaml``."""
    _build(arch)
    status, output, report = _qualify(WHOLE_MATRIX, artifacts_dir / "qualify", f".{arch}.")
    problems = []
    for row in report["variants"]:
        for summary in row["kselftest"]:
            record_property(f"{row['id']}/{summary['binary']}", str(summary["counts"]))
            problems += [
                f"{row['id']} {test}: {outcome} {reason}"
                for test, outcome, judgement, reason in summary["not_passed"]
                if judgement not in ("pass", "expected")
            ]
        if row["status"] != "passed":
            problems.append(f"{row['id']}: {row['status']} {row['reason']}")
    assert len(report["variants"]) == len(MATRIX[arch])
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])
    assert status == 0, output[-3000:]
