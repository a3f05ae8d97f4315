"""A deliberately failed scenario leaves a bundle; ``harness repro`` replays the same failure.

The scenario below is registered by this test module only (``harness repro`` imports
it from the module recorded in the bundle); its ``fail_on`` parameter names checks that
fail on purpose, and its seed picks a token the guest must echo back, so a replay that
did not reuse the recorded seed would fail differently.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.repro import read_bundle
from harness.scenarios.base import Check, GuestSpec, Verdict, scenario
from harness.scenarios.runner import run_scenario

pytestmark = [pytest.mark.tier2, pytest.mark.x86_64, pytest.mark.vtd]

NAME = "test-repro-deliberate"
ROOT = Path(__file__).resolve().parents[2]


@scenario(NAME, tier=2, arches=("x86_64",), guest=GuestSpec(viommu="vtd", devices=("edu",)),
          viommu="vtd", defaults={"fail_on": []})  # fmt: skip
def deliberate(guest: Any, params: Mapping[str, Any]) -> Verdict:
    """Test-only: real checks on a guest plus the checks named in ``fail_on``, failed."""
    verdict = Verdict(NAME)
    info = guest.call("system.info")
    verdict.add(Check("guest kernel is the harness's", "*-viommu-harness", info["kernel"],
                      info["kernel"].endswith("-viommu-harness")))  # fmt: skip
    token = f"{random.Random(params['seed']).getrandbits(64):016x}"
    echoed = guest.call("system.run", argv=["echo", token])["stdout"]
    echoed = echoed.decode() if isinstance(echoed, bytes) else str(echoed)
    verdict.add(Check.equal("guest echoes the seeded token", token, echoed.strip()))
    for name in params["fail_on"]:
        verdict.add(Check(name, "pass", "failed on purpose (fail_on)", False))
    return verdict


def harness_cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harness", *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


@pytest.fixture
def failed_run(artifacts_dir: Path) -> tuple[Any, Path]:
    """The deliberate scenario run once with two failing checks, VT-d without x-flts."""
    verdict = run_scenario(
        NAME,
        "x86_64",
        {"fail_on": ["deliberate one", "deliberate two"]},
        artifacts=artifacts_dir / "original",
        viommu_options={"flts": False},
        seed=31337,
    )
    return verdict, artifacts_dir / "original"


def test_failed_scenario_replays_to_the_same_failure(failed_run: tuple[Any, Path]) -> None:
    verdict, artifacts = failed_run
    assert not verdict.passed
    assert [c.name for c in verdict.failures] == ["deliberate one", "deliberate two"]
    assert verdict.facts["seed"] == 31337

    bundle = read_bundle(artifacts / "repro.json")
    assert bundle.kind == "scenario"
    assert bundle.seed == 31337
    assert bundle.failed_checks == ["deliberate one", "deliberate two"]
    assert bundle.scenario["module"] == __name__
    assert bundle.scenario["params"]["fail_on"] == ["deliberate one", "deliberate two"]
    assert bundle.scenario["viommu_options"] == {"flts": False}
    (guest,) = bundle.guests
    assert guest.machine.viommu is not None and guest.machine.viommu.flts is False
    assert re.fullmatch(r"[0-9a-f]{64}", guest.qemu["sha256"] or "")
    assert re.fullmatch(r"[0-9a-f]{64}", guest.kernel["sha256"] or "")
    assert guest.qemu["version"] and guest.image["key"]
    assert guest.kernel["release"].endswith("-viommu-harness")

    replay_dir = artifacts.parent / "replay"
    proc = harness_cli("repro", str(artifacts / "repro.json"), "--json",
                       "--artifacts", str(replay_dir))  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    replayed = json.loads(out)
    assert [c["name"] for c in replayed["checks"] if not c["ok"]] == bundle.failed_checks
    assert replayed["facts"]["seed"] == 31337
    assert "same failing checks as the bundle" in err
    original_machine = json.loads((artifacts / "machine.json").read_text())
    assert json.loads((replay_dir / "machine.json").read_text()) == original_machine


def test_repro_keep_prints_how_to_attach_and_tears_down(failed_run: tuple[Any, Path]) -> None:
    _, artifacts = failed_run
    proc = harness_cli("repro", "--keep", str(artifacts), start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("Ctrl-C tears down"):
            break
    text = "\n".join(lines)
    assert "Ctrl-C tears down" in text, text
    qmp = Path(re.search(r"qmp:\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    ssh = re.search(r"ssh:\s+(ssh .*)", text).group(1)  # type: ignore[union-attr]
    assert qmp.is_socket()
    assert "root@127.0.0.1" in ssh and re.search(r"-p \d+", ssh)
    assert re.search(r"console:\s+\S+console\.log", text)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "tearing down" in out
    assert not qmp.exists()
    assert not qmp.parent.exists()
