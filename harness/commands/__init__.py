"""CLI subcommands: each module has ``configure(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any


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
