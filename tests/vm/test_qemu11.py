"""Tier 2 on the second QEMU: ``--qemu 11`` runs QEMU 11 from the cached trixie tree.

The first use builds the tree (mmdebstrap of QEMU 11.1.3 and its firmware from
trixie-backports; 26-29 s measured here on a warm mirror), so this test is not ``slow``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from harness.pytest_plugin import kvm_skip_reason

pytestmark = [pytest.mark.tier2, pytest.mark.vtd, pytest.mark.x86_64]

EXPECTED_MAJOR = 11


def test_smoke_runs_on_qemu_11(request: pytest.FixtureRequest, artifacts_dir: Path) -> None:
    """smoke-vfio-edu passes on QEMU 11, and the running QEMU itself says it is 11.x."""
    from harness.errors import PrerequisiteError
    from harness.qemu import installs
    from harness.scenarios.runner import run_scenario

    accel = request.config.getoption("--accel")
    if reason := kvm_skip_reason("x86_64", accel):
        pytest.skip(reason)
    seen: dict[str, Any] = {}

    def on_ready(guest: Any) -> None:
        assert guest.vm.qmp is not None
        seen["version"] = guest.vm.qmp.execute("query-version")
        pid = guest.vm.pid
        seen["exe"] = os.readlink(f"/proc/{pid}/exe")  # the launcher exec'd: same PID
        seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")

    try:
        verdict = run_scenario(
            "smoke-vfio-edu", "x86_64", qemu="11", accel=accel, artifacts=artifacts_dir,
            on_ready=on_ready,
        )  # fmt: skip
    except PrerequisiteError as exc:  # mmdebstrap / subordinate ids missing, no QEMU 10 host
        pytest.skip(str(exc))
    assert verdict.passed, verdict.summary()
    qemu = seen["version"]["qemu"]
    running = f"{qemu['major']}.{qemu['minor']}.{qemu['micro']}"
    assert qemu["major"] == EXPECTED_MAJOR, f"query-version of the running QEMU: {running}"
    assert verdict.facts["qemu_version"].startswith(running + " ")
    tree = Path(verdict.facts["qemu_binary"]).parents[1] / installs.ROOT_DIR
    assert seen["exe"].startswith(str(tree)), f"{seen['exe']} is not the tree's loader"
    assert str(tree / "usr/bin/qemu-system-x86_64").encode() in seen["cmdline"]
    data_dirs = [seen["cmdline"][i + 1] for i, a in enumerate(seen["cmdline"]) if a == b"-L"]
    assert data_dirs and all(d.startswith(str(tree).encode()) for d in data_dirs), data_dirs
