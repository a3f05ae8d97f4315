"""The vIOMMU configurations the selftests run under, per guest arch, and what each binary needs.

The iommu suite drives the ``IOMMUFD_TEST`` mock, so it runs once per arch (in the first
configuration's guest); the VFIO suite drives an ``igb`` behind the vIOMMU and runs in
every configuration.  Each VFIO binary covers the suite's five IOMMU modes (type1,
type1v2, iommufd compat type1/type1v2, iommufd) as fixture variants itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.kselftest.build import SUITES


@dataclass(frozen=True)
class ViommuConfig:
    """A named vIOMMU configuration: kind (vtd / smmuv3) and description options."""

    arch: str
    label: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``arch/label``: how results and expected-results entries name the configuration."""
        return f"{self.arch}/{self.label}"


MATRIX: dict[str, tuple[ViommuConfig, ...]] = {
    "x86_64": (
        ViommuConfig("x86_64", "vtd-scalable-flts", "vtd", {"intremap": "on"}),
        ViommuConfig("x86_64", "vtd-scalable-ss", "vtd", {"flts": False, "intremap": "on"}),
        ViommuConfig(
            "x86_64",
            "vtd-legacy",
            "vtd",
            {"scalable_mode": False, "flts": False, "intremap": "on"},
        ),
    ),
    "arm64": (
        ViommuConfig("arm64", "smmuv3-nested", "smmuv3", {"stage": "nested"}),
        ViommuConfig("arm64", "smmuv3-s1", "smmuv3", {"stage": "1"}),
        ViommuConfig("arm64", "smmuv3-s2", "smmuv3", {"stage": "2"}),
    ),
}
"""VT-d: scalable mode with first-stage tables, scalable second-stage only, legacy mode
(interrupt remapping on in each); SMMUv3: both stages, stage 1 only, stage 2 only."""

#: seconds a binary may run before its guest is declared wedged (TCG; KVM is far faster)
TIMEOUTS = {"iommufd": 1800.0, "iommufd_fail_nth": 3600.0}
DEFAULT_TIMEOUT = 900.0


def configs(
    arch: str, kind: str | None, options: dict[str, Any], labels: list[str]
) -> list[ViommuConfig]:
    """The configurations to run: the named ones, one ad-hoc kind + options, or all of the arch."""
    known = MATRIX[arch]
    if labels:
        by_label = {c.label: c for c in known}
        unknown = [label for label in labels if label not in by_label]
        if unknown:
            raise ConfigError(
                f"unknown {arch} configuration {', '.join(unknown)} (known: {', '.join(by_label)})"
            )
        return [by_label[label] for label in labels]
    if kind is None and not options:
        return list(known)
    kind = kind or known[0].kind
    if kind not in {c.kind for c in known}:
        raise ConfigError(f"--viommu {kind}: not a vIOMMU of {arch} guests")
    base = dict(known[0].options)
    base.update(options)
    if base == known[0].options:
        return [known[0]]
    text = ",".join(f"{k}={v}" for k, v in sorted(options.items()))
    return [ViommuConfig(arch, f"{kind}-{text}" if text else kind, kind, base)]


@dataclass(frozen=True)
class Selection:
    """Which binaries (per suite) and which single tests (``-r`` names) to run."""

    binaries: dict[str, tuple[str, ...]]
    tests: dict[str, tuple[str, ...]]


def select(suite: str, names: list[str]) -> Selection:
    """``--suite`` and ``--test BINARY`` / ``--test BINARY:FIXTURE.VARIANT.TEST`` -> a Selection."""
    suites = tuple(SUITES) if suite == "all" else (suite,)
    if suite not in (*SUITES, "all"):
        raise ConfigError(f"--suite {suite}: expected iommu, vfio or all")
    every = {name: s for s in suites for name in SUITES[s]}
    if not names:
        return Selection({s: SUITES[s] for s in suites}, {})
    chosen: dict[str, list[str]] = {}
    tests: dict[str, list[str]] = {}
    for spec in names:
        binary, _, test = spec.partition(":")
        if binary not in every:
            raise ConfigError(
                f"--test {spec}: no binary {binary!r} in suite {suite} (known: {', '.join(every)})"
            )
        bucket = chosen.setdefault(every[binary], [])
        if binary not in bucket:
            bucket.append(binary)
        if test:
            tests.setdefault(binary, []).append(test)
    return Selection(
        {s: tuple(v) for s, v in chosen.items()}, {b: tuple(v) for b, v in tests.items()}
    )
