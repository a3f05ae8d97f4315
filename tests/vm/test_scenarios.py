"""Every registered scenario (tier >= 1) on every arch it supports, as registered.

Parametrized by the harness's pytest plugin (``registered_scenario``) from
``harness.scenarios.base.load_all()``: new scenarios are picked up without touching this
file, with their tier / arch / vIOMMU markers (``-m tier2``, ``--viommu smmuv3``).
"""

from __future__ import annotations

from typing import Any


def test_registered_scenario(registered_scenario: tuple[str, str], run_registered: Any) -> None:
    """Passes, or fails on exactly the rows its listed findings name (``known_failures``)."""
    from harness.scenarios.base import get

    name, arch = registered_scenario
    verdict = run_registered(name, arch)
    expected = get(name).expected_failures()
    failed = {c.name for c in verdict.failures}
    assert verdict.checks and failed == expected, f"{verdict.summary()}\n{verdict.table()}"
