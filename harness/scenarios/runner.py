"""Run one registered scenario: boot the guest it needs, run it, keep the evidence.

Used by ``harness run``, the pytest suites and the avocado job alike, so that a
scenario's logic exists once.  A failed run writes a repro bundle next to its
artifacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness import images
from harness.artifacts import new_artifacts_dir
from harness.errors import ConfigError
from harness.guest import Guest
from harness.profiles import guest_machine, make_viommu
from harness.qemu.probe import probe, require_properties, resolve_binary
from harness.scenarios.base import Scenario, Verdict, get


def prepare(
    scenario: Scenario,
    arch: str,
    *,
    qemu: str | None = None,
    accel: str = "auto",
) -> tuple[Any, Any, str]:
    """The image, machine description and QEMU binary for ``scenario`` on ``arch``."""
    if arch not in scenario.arches:
        raise ConfigError(
            f"scenario {scenario.name!r} runs on {', '.join(scenario.arches)}, not {arch}"
        )
    spec = scenario.guest(arch)
    image = images.ensure(arch)
    machine = guest_machine(
        image,
        make_viommu(spec.viommu, dict(spec.viommu_options)),
        spec.devices,
        accel=accel,
        memory_mb=spec.memory_mb,
        firmware=spec.firmware,
    )
    binary = resolve_binary(arch, qemu)
    require_properties(machine, probe(binary))
    return image, machine, binary


def run_scenario(
    name: str,
    arch: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    qemu: str | None = None,
    accel: str = "auto",
    artifacts: Path | None = None,
    on_ready: Callable[[Guest], None] | None = None,
) -> Verdict:
    """Boot, run and judge; the verdict is also written to ``verdict.json``."""
    scenario = get(name)
    arch = arch or scenario.arches[0]
    merged = {**scenario.defaults, **(params or {})}
    image, machine, binary = prepare(scenario, arch, qemu=qemu, accel=accel)
    artifacts = artifacts or new_artifacts_dir(f"{name}-{arch}")
    t0 = time.monotonic()
    with Guest(machine, artifacts, ready_marker=image.ready_marker, qemu=binary) as guest:
        if on_ready is not None:
            on_ready(guest)
        t1 = time.monotonic()
        verdict = scenario.run(guest, merged)
        verdict.timings.update(guest.timings)
        verdict.timings["scenario_s"] = time.monotonic() - t1
    verdict.timings["total_s"] = time.monotonic() - t0
    verdict.facts.setdefault("arch", arch)
    verdict.facts.setdefault("accel", guest.vm.accel)
    (artifacts / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=1, default=str))
    return verdict
