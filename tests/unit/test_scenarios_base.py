"""The scenario registry and verdicts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.scenarios import base
from harness.scenarios.base import Check, GuestSpec, Verdict, scenario

pytestmark = pytest.mark.tier0


@pytest.fixture
def clean_name() -> Iterator[str]:
    name = "unit-registry-probe"
    yield name
    base.REGISTRY.pop(name, None)


def _run(guest: Any, params: Any) -> Verdict:
    """A probe scenario."""
    return Verdict("probe")


def test_same_function_may_register_again(clean_name: str) -> None:
    for _ in range(2):  # a module executed twice (its sys.modules entry was dropped)
        scenario(clean_name, tier=1, arches=("x86_64",), guest=GuestSpec(None))(_run)
    assert base.REGISTRY[clean_name].description == "A probe scenario."


def test_another_function_cannot_take_the_name(clean_name: str) -> None:
    scenario(clean_name, tier=1, arches=("x86_64",), guest=GuestSpec(None))(_run)

    def other(guest: Any, params: Any) -> Verdict:
        return Verdict("other")

    with pytest.raises(ConfigError, match=r"registered twice: .*_run and .*other"):
        scenario(clean_name, tier=1, arches=("x86_64",), guest=GuestSpec(None))(other)


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown scenario 'nope'; known: .*smoke-vfio-edu"):
        base.get("nope")


def test_verdict_needs_checks_and_names_failures() -> None:
    verdict = Verdict("v")
    assert not verdict.passed  # no checks is not a pass
    verdict.add(Check.equal("a", 1, 1))
    verdict.extend([{"name": "b", "expected": 2, "got": 3, "ok": False}])
    assert not verdict.passed
    assert [c.name for c in verdict.failures] == ["b"]
    assert "b: expected 2, got 3" in verdict.summary()
