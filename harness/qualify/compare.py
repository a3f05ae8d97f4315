"""QEMU columns side by side: every difference between the QEMUs of a qualification matrix.

A matrix with two or more ``qemu:`` entries runs each cell (scenario x arch x vIOMMU
options x kernel) once per QEMU.  :func:`compare` puts a cell's runs side by side, the
first QEMU of the matrix as the baseline, and names what differs:

- ``status``: the scenario passes on one QEMU and fails on the other;
- ``check``: a verdict row passes on one and fails on the other;
- ``rows``: a verdict row that only one QEMU's run has;
- ``error`` / ``skip``: the scenario errors (an exception, no verdict) or is skipped on
  one QEMU only;
- ``capability``: from :func:`compare_capabilities`, devices, properties of the devices
  the harness uses, trace events of the families scenarios switch on, and accelerators
  that one QEMU has and the other lacks.

Pure: rows come from ``harness.qualify.report``, capabilities as ``QemuCapabilities``
JSON (``harness.qualify.job.record_capabilities``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: renames the harness knows (old name -> new name); both forms mean the same property
KNOWN_RENAMES = {
    ("intel-iommu", "x-scalable-mode"): "scalable-mode",
    ("intel-iommu", "x-flts"): "fsts",
}
DIFFERENCE_KINDS = ("status", "error", "skip", "check", "rows", "capability")
#: a renamed property's old name as a word of a row name ("QMP x-flts" is "QMP fsts")
_RENAMED_WORD = {
    re.compile(rf"(?<![\w-]){re.escape(old)}(?![\w-])"): new
    for (_, old), new in KNOWN_RENAMES.items()
}


@dataclass(frozen=True)
class Run:
    """One QEMU's run of a cell: outcome, version and its verdict rows (name, ok, got)."""

    label: str
    status: str
    version: str = ""
    reason: str = ""
    error: bool = False
    checks: tuple[tuple[str, bool, str], ...] = ()

    @property
    def outcome(self) -> str:
        """``passed``, ``failed``, ``error``, ``skipped``, ... (errors told apart from failures)."""
        return "error" if self.error else self.status


@dataclass(frozen=True)
class Difference:
    """One difference: its kind, where (cell or arch/device), and a one-line explanation."""

    kind: str
    where: str
    text: str
    #: the full list when ``text`` shortens it (device types)
    items: tuple[str, ...] = ()


@dataclass
class Cell:
    """A scenario x arch x vIOMMU options x kernel, with one run per QEMU label."""

    scenario: str
    arch: str
    viommu: str
    options: str
    kernel: str
    runs: dict[str, Run] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def where(self) -> str:
        """``scenario arch viommu-options`` (``kernel K`` when not the default)."""
        text = f"{self.scenario} {self.arch} {self.viommu}-{self.options}"
        return text if self.kernel in ("", "default") else f"{text} kernel {self.kernel}"


@dataclass
class Comparison:
    """Cells with their runs side by side, and every difference (capabilities included)."""

    labels: list[str]
    cells: list[Cell]
    capability_differences: list[Difference] = field(default_factory=list)
    versions: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def differences(self) -> list[Difference]:
        """Row differences in cell order, then capability differences."""
        return [d for c in self.cells for d in c.differences] + self.capability_differences

    def to_json(self) -> dict[str, Any]:
        """The comparison as plain JSON (``qualification.json``'s ``qemu_comparison``)."""
        return {
            "labels": self.labels,
            "versions": self.versions,
            "cells": [
                {
                    "scenario": c.scenario,
                    "arch": c.arch,
                    "viommu": c.viommu,
                    "options": c.options,
                    "kernel": c.kernel,
                    "runs": {
                        label: {
                            "status": r.outcome,
                            "version": r.version,
                            "reason": r.reason,
                            "failed_checks": [n for n, ok, _ in r.checks if not ok],
                        }
                        for label, r in c.runs.items()
                    },
                    "differences": [asdict(d) for d in c.differences],
                }
                for c in self.cells
            ],
            "differences": [asdict(d) for d in self.differences],
        }


def same_row(name: str) -> str:
    """A row's name with renamed properties under their new names (one row on both QEMUs)."""
    for pattern, new in _RENAMED_WORD.items():
        name = pattern.sub(new, name)
    return name


def _keyed(checks: Sequence[tuple[str, bool, str]]) -> dict[str, tuple[bool, str]]:
    """Checks by name (see :func:`same_row`); a name seen again becomes ``name (2)``, ..."""
    keyed: dict[str, tuple[bool, str]] = {}
    seen: dict[str, int] = {}
    for raw, ok, got in checks:
        name = same_row(raw)
        seen[name] = seen.get(name, 0) + 1
        keyed[name if seen[name] == 1 else f"{name} ({seen[name]})"] = (ok, got)
    return keyed


def _passes(ok: bool) -> str:
    return "passes" if ok else "fails"


def compare_runs(cell: Cell, base: Run, other: Run) -> list[Difference]:
    """What differs between two runs of one cell (``base`` is the baseline QEMU)."""
    where = cell.where
    a, b = base.label, other.label
    out: list[Difference] = []
    if base.outcome != other.outcome:
        for run, rest in ((base, other), (other, base)):
            if run.outcome in ("error", "skipped") and rest.outcome != run.outcome:
                kind = "error" if run.outcome == "error" else "skip"
                verb = "errors" if kind == "error" else "is skipped"
                out.append(Difference(kind, where, f"{verb} on {run.label} only: {run.reason}"))
        if not out:
            reason = other.reason or base.reason
            text = f"{base.outcome} on {a}, {other.outcome} on {b}"
            out.append(Difference("status", where, f"{text} ({reason})" if reason else text))
    if base.outcome in ("error", "skipped") or other.outcome in ("error", "skipped"):
        return out
    mine, theirs = _keyed(base.checks), _keyed(other.checks)
    for name in [*mine, *(n for n in theirs if n not in mine)]:
        if name in mine and name in theirs:
            (ok_a, got_a), (ok_b, got_b) = mine[name], theirs[name]
            if ok_a != ok_b:
                got = got_b if not ok_b else got_a
                out.append(
                    Difference(
                        "check",
                        where,
                        f"{name!r} {_passes(ok_a)} on {a}, {_passes(ok_b)} on {b}"
                        + (f" (failing side got {got})" if got else ""),
                    )
                )
        else:
            label, (ok, _) = (a, mine[name]) if name in mine else (b, theirs[name])
            out.append(Difference("rows", where, f"{name!r} only on {label} ({_passes(ok)})"))
    return out


def compare(rows: Sequence[Any], capabilities: Mapping[str, Any] | None = None) -> Comparison:
    """Side by side per cell, in matrix order; ``rows`` are ``report.Row`` objects."""
    labels: list[str] = []
    cells: dict[tuple[str, ...], Cell] = {}
    for row in rows:
        if row.qemu not in labels:
            labels.append(row.qemu)
        key = (row.scenario, row.arch, row.viommu, row.options, row.kernel)
        cell = cells.setdefault(key, Cell(*key))
        cell.runs[row.qemu] = Run(
            label=row.qemu,
            status=row.status,
            version=row.qemu_version,
            reason=row.reason,
            error=row.error,
            checks=tuple((str(n), bool(ok), str(got)) for n, ok, got in row.check_results),
        )
    for cell in cells.values():
        runs = [cell.runs[label] for label in labels if label in cell.runs]
        for other in runs[1:]:
            cell.differences += compare_runs(cell, runs[0], other)
    comparison = Comparison(labels, list(cells.values()))
    if capabilities:
        comparison.capability_differences = compare_capabilities(capabilities, labels)
        comparison.versions = {
            label: {arch: _version_text(c) for arch, c in per_arch.items() if isinstance(c, dict)}
            for label, per_arch in capabilities.items()
        }
    return comparison


def _version_text(caps: Mapping[str, Any]) -> str:
    version = ".".join(str(v) for v in caps.get("version", []))
    package = str(caps.get("package") or "")
    return f"{version} ({package})" if package else version


def _names(items: Sequence[str], limit: int = 0) -> str:
    shown = list(items) if not limit or len(items) <= limit else [*items[:limit], "..."]
    return ", ".join(shown)


def compare_capabilities(
    capabilities: Mapping[str, Mapping[str, Any]], labels: Sequence[str] | None = None
) -> list[Difference]:
    """Devices, probed devices' properties and accelerators one QEMU has and another lacks.

    ``capabilities``: label -> arch -> ``QemuCapabilities.to_json()`` (or a string saying
    why it could not be probed).  Each label is compared with the first.
    """
    order = [label for label in (labels or capabilities) if label in capabilities]
    out: list[Difference] = []
    if len(order) < 2:
        return out
    base_label = order[0]
    for other_label in order[1:]:
        base_all, other_all = capabilities[base_label], capabilities[other_label]
        for arch in sorted(set(base_all) | set(other_all)):
            base, other = base_all.get(arch), other_all.get(arch)
            where = f"{arch} QEMU {base_label} vs {other_label}"
            if not isinstance(base, Mapping) or not isinstance(other, Mapping):
                why = base if not isinstance(base, Mapping) else other
                out.append(Difference("capability", where, f"not compared: {why}"))
                continue
            out += _property_differences(where, base_label, other_label, base, other)
            pairs = (
                ("device types", "devices"),
                ("trace events", "trace_events"),
                ("accelerators", "accelerators"),
            )
            for kind, key in pairs:
                only_a = sorted(set(base.get(key, [])) - set(other.get(key, [])))
                only_b = sorted(set(other.get(key, [])) - set(base.get(key, [])))
                for label, only in ((base_label, only_a), (other_label, only_b)):
                    if only:
                        out.append(
                            Difference(
                                "capability",
                                where,
                                f"{len(only)} {kind} only in {label}: {_names(only, 12)}",
                                tuple(only),
                            )
                        )
    return out


def _property_differences(
    where: str, a: str, b: str, base: Mapping[str, Any], other: Mapping[str, Any]
) -> list[Difference]:
    out: list[Difference] = []
    props_a: Mapping[str, Sequence[str]] = base.get("properties", {})
    props_b: Mapping[str, Sequence[str]] = other.get("properties", {})
    for device in sorted(set(props_a) | set(props_b)):
        if device not in props_a or device not in props_b:
            label = a if device in props_a else b
            out.append(Difference("capability", where, f"device {device} only in {label}"))
            continue
        only_a = sorted(set(props_a[device]) - set(props_b[device]))
        only_b = sorted(set(props_b[device]) - set(props_a[device]))
        renamed = []
        for old, new in KNOWN_RENAMES.items():
            if old[0] != device:
                continue
            for olds, news in ((only_a, only_b), (only_b, only_a)):
                if old[1] in olds and new in news:
                    renamed.append(f"{old[1]} -> {new}")
                    olds.remove(old[1])
                    news.remove(new)
        if renamed:
            out.append(
                Difference(
                    "capability",
                    where,
                    f"{device}: renamed {', '.join(renamed)} (same meaning; the harness"
                    " uses whichever the QEMU has)",
                )
            )
        for label, only in ((a, only_a), (b, only_b)):
            if only:
                out.append(
                    Difference(
                        "capability", where, f"{device}: properties only in {label}: {_names(only)}"
                    )
                )
    return out


def differences_text(comparison: Comparison) -> str:
    """Every difference, one per line, grouped by kind (for terminals and text files)."""
    lines = [f"QEMU differences ({' vs '.join(comparison.labels)}):"]
    for label, per_arch in comparison.versions.items():
        lines.append(f"  {label}: " + "; ".join(f"{a} {v}" for a, v in sorted(per_arch.items())))
    found = comparison.differences
    if not found:
        lines.append("  none")
    for kind in DIFFERENCE_KINDS:
        for d in (d for d in found if d.kind == kind):
            lines.append(f"  [{d.kind}] {d.where}: {d.text}")
    return "\n".join(lines)
