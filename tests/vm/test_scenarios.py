"""Every registered scenario (tier >= 1) on every arch it supports, as registered.

Parametrized by the harness's pytest plugin (``registered_scenario``) from
``harness.scenarios.base.load_all()``: new scenarios are picked up without touching this
file, with their tier / arch / vIOMMU markers (``-m tier2``, ``--viommu smmuv3``).
"""

from __future__ import annotations

from typing import Any


def test_registered_scenario(registered_scenario: tuple[str, str], run_registered: Any) -> None:
    name, arch = registered_scenario
    verdict = run_registered(name, arch)
    assert verdict.passed, f"{verdict.summary()}\n{verdict.table()}"
