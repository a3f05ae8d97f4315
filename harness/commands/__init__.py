"""CLI subcommands: each module has ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from harness.scenarios.base import Verdict


def name_value(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with on/off/true/false and integers understood (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    parsed: Any = value
    if value.lower() in ("on", "true", "yes"):
        parsed = True
    elif value.lower() in ("off", "false", "no"):
        parsed = False
    else:
        with contextlib.suppress(ValueError):
            parsed = int(value, 0)
    return key.replace("-", "_"), parsed


def report(verdict: Verdict, artifacts: Path, as_json: bool) -> int:
    """Print ``verdict`` (a table, or JSON with the artifacts path); its exit status."""
    if as_json:
        print(json.dumps({**verdict.to_json(), "artifacts": str(artifacts)}, indent=1, default=str))
    else:
        print(verdict.table())
        print(verdict.summary())
        print(f"artifacts: {artifacts}")
    return 0 if verdict.passed else 1
