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


def scenario_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with a JSON value (a plain string when it is not JSON; argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def add_scenario_options(parser: argparse.ArgumentParser, *, seed_help: str) -> None:
    """The options of one scenario run: ``--accel``, ``--param``, ``--viommu-opt``, ``--seed``."""
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument(
        "--param", type=scenario_param, action="append", default=[], metavar="NAME=VALUE",
        help="scenario parameter (JSON value), repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--viommu-opt", type=name_value, action="append", default=[], metavar="NAME=VALUE",
        help="override a vIOMMU option of the scenario's machine, e.g. flts=off (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help=seed_help)


def report(verdict: Verdict, artifacts: Path, as_json: bool) -> int:
    """Print ``verdict`` (a table, or JSON with the artifacts path); its exit status."""
    if as_json:
        print(json.dumps({**verdict.to_json(), "artifacts": str(artifacts)}, indent=1, default=str))
    else:
        print(verdict.table())
        print(verdict.summary())
        print(f"artifacts: {artifacts}")
    return 0 if verdict.passed else 1
