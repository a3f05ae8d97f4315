"""What a fuzz run reached: ioctl x outcome, rule pairs, and the errno contract's rows.

``Coverage`` counts every step's (ioctl, outcome) and every pair of consecutive rules;
``contract_gaps`` compares the outcomes reached with the errno-contract table of seed 001
(``harness.scenarios.guest.errno_contract``): which of its (ioctl, errno) rows the fuzzer
never produced.  Rows for malformed sizes, trailing bytes and NULL arguments are outside
what the fuzzer sends (it speaks through the driver), and are listed apart.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.driver.errors import errno_name

#: the contract's per-struct probes the fuzzer never sends (it builds well-formed structs)
STRUCT_PROBES = ("size", "trailing", "NULL")


@dataclass
class Coverage:
    """Counts of (ioctl, outcome) and (rule, next rule) over a run."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    pairs: Counter[tuple[str, str]] = field(default_factory=Counter)
    steps: int = 0
    _last: str | None = None

    def record(self, rule: str, ioctl: str, outcome: str) -> None:
        """One step: ``rule`` issued ``ioctl`` and the kernel answered ``outcome``."""
        self.steps += 1
        self.outcomes[(ioctl, outcome)] += 1
        if self._last is not None:
            self.pairs[(self._last, rule)] += 1
        self._last = rule

    def example_ended(self) -> None:
        """Pairs do not span examples (each starts from a fresh iommufd)."""
        self._last = None

    def table(self) -> list[dict[str, Any]]:
        """One row per ioctl: its outcomes and how often each was reached."""
        by_ioctl: dict[str, dict[str, int]] = {}
        for (ioctl, outcome), count in sorted(self.outcomes.items()):
            by_ioctl.setdefault(ioctl, {})[outcome] = count
        return [{"ioctl": k, "outcomes": v} for k, v in by_ioctl.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "ioctl_outcomes": self.table(),
            "distinct_ioctl_outcomes": len(self.outcomes),
            "distinct_rule_pairs": len(self.pairs),
        }

    def text(self) -> str:
        """The ioctl x outcome table for humans."""
        lines = []
        width = max((len(r["ioctl"]) for r in self.table()), default=10)
        for row in self.table():
            outs = ", ".join(f"{o} x{n}" for o, n in row["outcomes"].items())
            lines.append(f"  {row['ioctl']:<{width}}  {outs}")
        return "\n".join(lines)


def contract_rows() -> list[tuple[str, str, str]]:
    """(ioctl, case, expected errno name) of every errno-contract case of the 7.3 kernel."""
    from harness.scenarios.guest.errno_contract import specs

    rows = []
    for spec in specs(noiommu=False):
        for case in spec.cases:
            rows.append((spec.name, case.name, errno_name(case.expected)))
    return rows


def contract_gaps(coverage: Coverage) -> dict[str, Any]:
    """Which contract (ioctl, errno) rows the run reached, and which it never did."""
    reached_pairs = {(ioctl, outcome) for ioctl, outcome in coverage.outcomes}
    # the fuzzer names IOMMU_TEST_CMD by its op (IOMMU_TEST_CMD(MOCK_DOMAIN)); the table does not
    reached_pairs |= {(ioctl.split("(", 1)[0], outcome) for ioctl, outcome in reached_pairs}
    reached: list[dict[str, str]] = []
    missed: list[dict[str, str]] = []
    for ioctl, case, expected in contract_rows():
        row = {"ioctl": ioctl, "case": case, "errno": expected}
        (reached if (ioctl, expected) in reached_pairs else missed).append(row)
    contract_ioctls = {ioctl for ioctl, _, _ in contract_rows()}
    success = sorted(i for i in contract_ioctls if (i, "ok") in reached_pairs)
    return {
        "reached": reached,
        "never_reached": missed,
        "ioctls_with_success": success,
        "ioctls_never_succeeded": sorted(contract_ioctls - set(success)),
        "not_fuzzed": f"per-struct probes ({', '.join(STRUCT_PROBES)}) and"
        f" {errno_name(errno.ENOTTY)}",
    }
