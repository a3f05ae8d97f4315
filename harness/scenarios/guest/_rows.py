"""Row kinds for guest halves (a leading underscore: not an agent module).

A guest half's rows are dicts (``CheckTable``); ``Check.from_row`` reads their ``kind``.
``CheckTable.errno`` rows are effect rows (the errno the kernel returned) and
``CheckTable.succeeds`` rows setup rows (a step worked); ``succeeds_effect`` is the
success that *is* the behaviour under test (a device still usable after an error path,
a mapping the mock domain confirms), and ``table.add(..., kind=SETUP)`` a plain step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from harness.driver.checks import CheckTable

__all__ = ["EFFECT", "SETUP", "succeeds_effect"]

#: ``harness.scenarios.base.EFFECT`` / ``SETUP`` (base is a host module, not shipped to
#: guests by ``harness.agent.bundle``; a unit test keeps the values equal)
EFFECT = "effect"
SETUP = "setup"

P = ParamSpec("P")
R = TypeVar("R")


def succeeds_effect(
    table: CheckTable, name: str, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
) -> R | None:
    """``table.succeeds`` whose row is an effect row: the success is what the story tests."""
    result = table.succeeds(name, fn, *args, **kwargs)
    table.rows[-1]["kind"] = EFFECT
    return result
