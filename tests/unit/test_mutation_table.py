"""docs/MUTATIONS.md and the mutations the tests apply are the same list."""

from __future__ import annotations

import re
from pathlib import Path

from harness.scenarios.guest.mutations import MUTATIONS
from tests.vm.test_mutations import CASES

ROOT = Path(__file__).resolve().parents[2]


def _vm_rows() -> dict[str, str]:
    """mutation -> row name, for the table rows whose test is tests/vm/test_mutations.py."""
    rows = {}
    for line in (ROOT / "docs" / "MUTATIONS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4] == "`tests/vm/test_mutations.py`":
            rows[cells[0].strip("`")] = re.sub(r"^`|`$", "", cells[3])
    return rows


def test_table_lists_every_vm_mutation_with_its_row() -> None:
    assert _vm_rows() == {case.mutation: case.row for case in CASES}


def test_every_mutation_the_agent_offers_is_tested() -> None:
    assert {case.mutation for case in CASES} == set(MUTATIONS)
