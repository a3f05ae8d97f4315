"""Tier 1 scenarios (host halves): the kernel's IOMMUFD_TEST mock in a booted guest.

Each scenario runs one guest half (``harness.scenarios.guest.mock``, ``errno_contract``,
``vfio_compat``) and turns its check table into a ``Verdict``.  The guest needs no vIOMMU
and no device: everything is the iommufd core and its selftest mock, which a kernel with
CONFIG_IOMMUFD_TEST provides.  ``run_on(guest, name)`` runs a case on a guest booted by
someone else (the VM tests share one guest per arch across all tier 1 cases).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.driver.checks import format_rows
from harness.guest import Guest
from harness.qemu.probe import MissingCapabilityError
from harness.scenarios.base import Check, GuestSpec, Verdict, scenario

ARCHES = ("x86_64", "arm64")
#: the machine tier 1 needs: no vIOMMU, no device (the mock provides the devices)
SPEC = GuestSpec(viommu=None, devices=())
#: what the guest kernel must have for tier 1
REQUIRED_KCONFIG = ("CONFIG_IOMMUFD", "CONFIG_IOMMUFD_TEST")
#: columns of a guest table worth printing, in order
COLUMNS = ("name", "expected", "got", "seed", "ioctl", "note")


@dataclass(frozen=True)
class Tier1Case:
    """A registered tier 1 scenario: its agent method and how long it may take."""

    name: str
    method: str
    description: str
    timeout: float = 600.0
    params: Mapping[str, Any] = field(default_factory=dict)


CASES = {
    case.name: case
    for case in (
        Tier1Case("tier1-mock-smoke", "mock.smoke", "every tier 1 object type once (arm64 smoke)"),
        Tier1Case(
            "tier1-nested-hwpt",
            "mock.nested_hwpt",
            "nested HWPT: alloc, attach / replace / detach, invalidation via MD_CHECK_IOTLB",
        ),
        Tier1Case(
            "tier1-dirty-tracking",
            "mock.dirty_tracking",
            "dirty tracking: enforce, toggle, mock-marked pages read back as bitmaps",
        ),
        Tier1Case(
            "tier1-viommu",
            "mock.viommu",
            "vIOMMU / vDEVICE / nested via vIOMMU, invalidation via DEV_CHECK_CACHE",
        ),
        Tier1Case(
            "tier1-fault-queue",
            "mock.fault_queue",
            "fault queue: TRIGGER_IOPF, read, respond, ring checker verdict",
        ),
        Tier1Case(
            "tier1-veventq",
            "mock.veventq",
            "vEVENTQ: TRIGGER_VEVENT sequences, forced overflow and LOST_EVENTS",
        ),
        Tier1Case(
            "tier1-errno-contract",
            "errno_contract.probe",
            "seed 001's errno contract for every iommufd ioctl (kernel vs seed)",
        ),
        Tier1Case(
            "tier1-vfio-compat",
            "vfio_compat.compat",
            "seed 002's VFIO type1 compat ioctls on /dev/iommu",
        ),
    )
}


class Tier1UnavailableError(MissingCapabilityError):
    """The guest kernel lacks what tier 1 needs (the message names it); callers skip."""


def preflight(guest: Guest) -> None:
    """Raise ``Tier1UnavailableError`` naming what is missing (a config option, /dev/iommu)."""
    config = guest.call("system.kernel_config", timeout=30)
    missing = [opt for opt in REQUIRED_KCONFIG if config.get(opt) not in ("y", "m")]
    if missing:
        raise Tier1UnavailableError(f"guest kernel lacks {', '.join(missing)}")
    if not guest.call("selfcheck.devices", timeout=30)["iommu"]:
        raise Tier1UnavailableError("guest has no /dev/iommu")


def judge(name: str, result: Mapping[str, Any]) -> Verdict:
    """A verdict from a guest table: one check per row, the rest of the answer as facts."""
    verdict = Verdict(name)
    rows = list(result.get("rows", []))
    verdict.extend(rows)
    if not rows:
        verdict.add(Check("guest returned checks", "at least one row", 0, False))
    rows_ok, table_ok = all(r["ok"] for r in rows), bool(result.get("ok"))
    if table_ok != rows_ok:
        verdict.add(Check.equal("guest table's ok agrees with its rows", rows_ok, table_ok))
    verdict.facts.update({k: v for k, v in result.items() if k not in ("rows", "ok")})
    verdict.facts["rows"] = len(rows)
    return verdict


def table_text(result: Mapping[str, Any]) -> str:
    """The guest table as fixed-width text (failed rows marked FAIL)."""
    rows = result.get("rows", [])
    present = tuple(c for c in COLUMNS if any(c in r for r in rows))
    return f"{result.get('title', '')}\n{format_rows(rows, present)}"


def run_on(
    guest: Guest,
    name: str,
    params: Mapping[str, Any] | None = None,
    artifacts: Path | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """Run tier 1 case ``name`` on ``guest``; the verdict and the guest's raw answer."""
    case = CASES[name]
    t0 = time.monotonic()
    result: dict[str, Any] = guest.call(
        case.method, timeout=case.timeout, **{**case.params, **(params or {})}
    )
    verdict = judge(name, result)
    verdict.timings["guest_call_s"] = time.monotonic() - t0
    if artifacts is not None:
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
        (artifacts / f"{name}.txt").write_text(table_text(result) + "\n")
    return verdict, result


def _runner(case: Tier1Case) -> Callable[[Guest, Mapping[str, Any]], Verdict]:
    def run(guest: Guest, params: Mapping[str, Any]) -> Verdict:
        preflight(guest)
        extra = {k: v for k, v in params.items() if k != "seed"}
        verdict, _ = run_on(guest, case.name, extra, guest.artifacts)
        return verdict

    run.__doc__ = case.description
    run.__name__ = case.name.replace("-", "_")
    return run


for _case in CASES.values():
    scenario(_case.name, tier=1, arches=ARCHES, guest=SPEC)(_runner(_case))
