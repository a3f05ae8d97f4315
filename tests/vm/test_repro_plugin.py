"""The pytest plugin with real guests: xdist workers, shared guests, failed-test bundles.

Each test runs an inner pytest session (a subprocess) on a small generated test file and
checks what it left behind: JUnit properties, artifacts directories, repro bundles.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.repro import read_bundle

pytestmark = [pytest.mark.tier2, pytest.mark.x86_64, pytest.mark.vtd]

INNER = """
import os
import time

def _boot_and_record(boot_guest, record_property):
    guest = boot_guest("x86_64", "vtd", devices=())
    record_property("worker", os.environ.get("PYTEST_XDIST_WORKER", "main"))
    record_property("ssh_port", guest.vm.ssh_port)
    record_property("run_dir", str(guest.vm.run_dir))
    record_property("qemu_pid", guest.vm.pid)
    record_property("guest_artifacts", str(guest.artifacts))
    return guest

def test_one(boot_guest, record_property):
    guest = _boot_and_record(boot_guest, record_property)
    assert guest.call("system.info")["kernel"].endswith("-viommu-harness")

def test_two(boot_guest, record_property):
    guest = _boot_and_record(boot_guest, record_property)
    assert guest.run("true").status == 0

def test_fails_on_purpose(boot_guest, record_property):
    guest = _boot_and_record(boot_guest, record_property)
    assert guest.call("system.info")["kernel"] == "not-this-kernel"
"""

SHARED = """
def test_first(shared_guest, record_property):
    record_property("qemu_pid", shared_guest("x86_64", "vtd", devices=()).vm.pid)

def test_second(shared_guest, record_property):
    record_property("qemu_pid", shared_guest("x86_64", "vtd", devices=()).vm.pid)

def test_other_machine(shared_guest, record_property):
    record_property("qemu_pid", shared_guest("x86_64", "vtd", devices=("edu",)).vm.pid)
"""


def inner_pytest(tmp_path: Path, source: str, *args: str) -> tuple[int, str, dict[str, Any]]:
    """Run ``source`` as a test file under the plugin; returns status, output, JUnit cases."""
    (tmp_path / "test_inner.py").write_text(source)
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "VIOMMU_ARTIFACTS": str(tmp_path / "artifacts")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "harness.pytest_plugin", "-p", "no:cacheprovider",
         f"--junitxml={junit}", "-o", "junit_family=xunit2", *args, "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    cases = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        props: dict[str, list[str]] = {}
        for prop in case.iter("property"):
            props.setdefault(str(prop.get("name")), []).append(str(prop.get("value")))
        cases[str(case.get("name"))] = {
            "failed": case.find("failure") is not None,
            "props": {k: v[0] for k, v in props.items()},
        }
    return proc.returncode, proc.stdout + proc.stderr, cases


def test_xdist_workers_do_not_collide_and_failures_leave_bundles(tmp_path: Path) -> None:
    status, output, cases = inner_pytest(tmp_path, INNER, "-n", "2")
    assert status == 1, output
    assert not cases["test_one"]["failed"] and not cases["test_two"]["failed"], output
    assert cases["test_fails_on_purpose"]["failed"]
    props = [c["props"] for c in cases.values()]
    assert {p["worker"] for p in props} == {"gw0", "gw1"}
    for key in ("ssh_port", "run_dir", "qemu_pid", "guest_artifacts", "artifacts"):
        assert len({p[key] for p in props}) == 3, key
    assert not any(Path(p["run_dir"]).exists() for p in props)

    failed = cases["test_fails_on_purpose"]["props"]
    assert f"artifacts {failed['guest_artifacts']}" in output
    assert "console (last lines)" in output
    bundle = read_bundle(failed["repro"])
    assert bundle.kind == "test"
    assert bundle.test["nodeid"] == "test_inner.py::test_fails_on_purpose"
    assert Path(failed["repro"]).parent == Path(failed["artifacts"])
    assert bundle.guests[0].artifacts == failed["guest_artifacts"]
    assert "not-this-kernel" in str(bundle.outcome["error"])

    proc = subprocess.run(
        [sys.executable, "-m", "harness", "repro", failed["repro"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "VIOMMU_ARTIFACTS": str(tmp_path / "replay")},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed" in proc.stdout
    assert "not-this-kernel" in proc.stdout


def test_shared_guest_is_reused_per_machine_description(tmp_path: Path) -> None:
    status, output, cases = inner_pytest(tmp_path, SHARED)
    assert status == 0, output
    pids = {name: case["props"]["qemu_pid"] for name, case in cases.items()}
    assert pids["test_first"] == pids["test_second"]
    assert pids["test_other_machine"] != pids["test_first"]
    shared = {case["props"]["artifacts:shared-x86_64-vtd"] for case in cases.values()}
    assert len(shared) == 2
    assert all("/artifacts/tests/shared/" in path for path in shared)
