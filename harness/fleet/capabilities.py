"""What a host can run, as Dask worker resources, and which hosts each matrix cell needs.

A host's capabilities become resources of its worker (each worth the host's slots):

==================  ==========================================================
``slot``            one cell at a time per slot (every cell takes one)
``qemu-ARCH``       a QEMU for ARCH guests is installed (TCG runs any arch)
``kvm-ARCH``        the harness's KVM verdict for ARCH guests is not "unusable"
``iommufd``         ``/dev/iommu`` exists
``tier3``           ``harness tier3 check`` passes for the host's ``host_device``
``label-NAME``      a label the fleet file gives the host
==================  ==========================================================

``requirements(variant)`` is what a cell takes; ``route`` says which hosts can run each
cell and, for a cell none can, the capability missing (pure: unit-tested without hosts).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.qualify.matrix import Variant

ARCHES = ("x86_64", "arm64")
#: tier-3 scenarios that need real passthrough hardware (the others are simulated)
TIER3_REAL = ("tier3-passthrough",)
RESOURCE_TEXT = {
    "slot": "a free slot",
    "iommufd": "/dev/iommu (iommufd)",
    "tier3": "tier 3 (nesting-capable host IOMMU and a vfio-pci host device)",
}


def describe_resource(name: str) -> str:
    """Human words for a resource name."""
    if name in RESOURCE_TEXT:
        return RESOURCE_TEXT[name]
    kind, _, arg = name.partition("-")
    return {
        "qemu": f"QEMU for {arg} guests",
        "kvm": f"usable KVM for {arg} guests",
        "label": f"label {arg}",
    }.get(kind, name)


@dataclass
class HostCaps:
    """The probe's answer for one host."""

    name: str
    node: str = ""
    arch: str = ""
    kernel: str = ""
    slots: int = 1
    qemu: dict[str, str] = field(default_factory=dict)  # guest arch -> version or ""
    kvm: dict[str, str] = field(default_factory=dict)  # guest arch -> yes | untried | no: why
    iommufd: bool = False
    tier3: str = ""  # "yes" or the reason it cannot run
    labels: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)  # python, harness, distributed

    def resources(self) -> dict[str, float]:
        """Dask worker resources (every capability worth ``slots``)."""
        res: dict[str, float] = {"slot": float(self.slots)}
        for arch, version in self.qemu.items():
            if version:
                res[f"qemu-{arch}"] = float(self.slots)
        for arch, verdict in self.kvm.items():
            if verdict in ("yes", "untried"):
                res[f"kvm-{arch}"] = float(self.slots)
        if self.iommufd:
            res["iommufd"] = float(self.slots)
        if self.tier3 == "yes":
            res["tier3"] = float(self.slots)
        for label in self.labels:
            res[f"label-{label}"] = float(self.slots)
        return res

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostCaps:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["labels"] = tuple(known.get("labels", ()))
        return cls(**known)


def probe_host(
    name: str, slots: int = 1, labels: Sequence[str] = (), host_device: str | None = None
) -> HostCaps:
    """Ask this machine what it can run (QEMU probes are cached per binary)."""
    from harness.errors import HarnessError
    from harness.fleet.version import identity
    from harness.host import host_arch
    from harness.qemu.accel import kvm_access_problem, kvm_verdict
    from harness.qemu.probe import probe, resolve_binary
    from harness.tier3.hostcheck import check_host

    caps = HostCaps(
        name=name,
        node=platform.node(),
        arch=host_arch(),
        kernel=platform.release(),
        slots=slots,
        labels=tuple(labels),
        iommufd=os.path.exists("/dev/iommu"),
        versions=identity(),
    )
    for arch in ARCHES:
        try:
            caps.qemu[arch] = probe(resolve_binary(arch)).version_text
        except (HarnessError, OSError):
            caps.qemu[arch] = ""
        if arch != caps.arch:
            caps.kvm[arch] = "no: not the host's arch"
            continue
        problem = kvm_access_problem()
        verdict = kvm_verdict(arch)
        if problem is not None:
            caps.kvm[arch] = f"no: {problem}"
        elif verdict is None:
            caps.kvm[arch] = "untried"
        else:
            caps.kvm[arch] = "yes" if verdict else "no: KVM did not run a guest here"
    report = check_host(host_device)
    caps.tier3 = "yes" if report.skip_reason is None else str(report.skip_reason)
    return caps


def requirements(variant: Variant) -> dict[str, float]:
    """The resources one cell takes on its host."""
    req = {"slot": 1.0, f"qemu-{variant.arch}": 1.0}
    if variant.accel == "kvm":
        req[f"kvm-{variant.arch}"] = 1.0
    if variant.scenario in TIER3_REAL:
        req["tier3"] = 1.0
        req["iommufd"] = 1.0
    return req


def missing(req: Mapping[str, float], offered: Mapping[str, float]) -> list[str]:
    """Resources of ``req`` that ``offered`` lacks (or has too few of)."""
    return sorted(k for k, v in req.items() if offered.get(k, 0.0) < v)


@dataclass(frozen=True)
class Route:
    """Which hosts can run a cell, or why none can."""

    variant: Variant
    resources: dict[str, float]
    hosts: tuple[str, ...]
    missing: str = ""  # for an unschedulable cell: the capability no host has


def route(variants: Sequence[Variant], hosts: Mapping[str, Mapping[str, float]]) -> list[Route]:
    """Route each cell to the hosts (name -> resources) that can run it, in matrix order."""
    routes = []
    for v in variants:
        req = requirements(v)
        able = tuple(name for name, offered in hosts.items() if not missing(req, offered))
        why = ""
        if not able:
            gaps = {name: missing(req, offered) for name, offered in hosts.items()}
            if not gaps:
                why = "no host in the fleet"
            else:
                nobody = [r for r in req if all(r in g for g in gaps.values())]
                if nobody:
                    why = "no host has " + ", ".join(describe_resource(r) for r in nobody)
                else:
                    best = min(gaps, key=lambda n: len(gaps[n]))
                    why = (
                        "no host has all of: "
                        + ", ".join(describe_resource(r) for r in sorted(req))
                        + f" ({best} lacks {', '.join(gaps[best])})"
                    )
        routes.append(Route(v, req, able, why))
    return routes


def table(hosts: Sequence[HostCaps]) -> str:
    """The capability table ``harness fleet probe`` prints."""
    head = ("host", "arch", "kernel", "slots", "QEMU x86_64", "QEMU arm64", "KVM", "iommufd",
            "tier 3", "labels")  # fmt: skip
    rows = [head]
    for h in hosts:
        kvm = h.kvm.get(h.arch, "")
        rows.append((
            h.name, h.arch, h.kernel, str(h.slots),
            h.qemu.get("x86_64", "").split(" (")[0] or "-",
            h.qemu.get("arm64", "").split(" (")[0] or "-",
            kvm[:40], "yes" if h.iommufd else "no", h.tier3[:50], ",".join(h.labels) or "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip
