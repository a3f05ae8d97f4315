"""Kernel config fragments: parse the requests, then check the final ``.config`` honours them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from harness.errors import ConfigError

_ASSIGN = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_NOT_SET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Request:
    """One option a fragment asks for, with where it was asked."""

    name: str
    value: str
    origin: str


@dataclass(frozen=True)
class Mismatch:
    """A requested option whose final value differs; ``got`` is None when the symbol is absent."""

    request: Request
    got: str | None

    def describe(self) -> str:
        """One phrase for an error message, e.g. ``CONFIG_X=y (common.config:12): got n``."""
        if self.got is None:
            got = "absent (unknown symbol or unmet dependency)"
        elif self.got == "n":
            got = "not set"
        else:
            got = self.got
        return f"{self.request.name}={self.request.value} ({self.request.origin}): {got}"


def parse_fragment(text: str, name: str) -> list[Request]:
    """The option requests of one fragment, in order; ConfigError on a malformed line."""
    requests = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        origin = f"{name}:{number}"
        not_set = _NOT_SET.match(line)
        if not_set:
            requests.append(Request(not_set.group(1), "n", origin))
            continue
        if not line or line.startswith("#"):
            continue
        assign = _ASSIGN.match(line)
        if not assign:
            raise ConfigError(f"{origin}: not a kernel option assignment: {line!r}")
        requests.append(Request(assign.group(1), assign.group(2), origin))
    return requests


def merge_requests(fragments: Iterable[tuple[str, str]]) -> dict[str, Request]:
    """Requests of ``(name, text)`` fragments merged in order: later fragments win."""
    merged: dict[str, Request] = {}
    for name, text in fragments:
        for request in parse_fragment(text, name):
            merged.pop(request.name, None)
            merged[request.name] = request
    return merged


def parse_config(text: str) -> dict[str, str]:
    """A ``.config`` as ``{CONFIG_NAME: value}``, ``n`` for ``# ... is not set`` lines."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        not_set = _NOT_SET.match(line)
        if not_set:
            values[not_set.group(1)] = "n"
            continue
        assign = _ASSIGN.match(line)
        if assign:
            values[assign.group(1)] = assign.group(2)
    return values


def mismatches(requests: Mapping[str, Request], final: Mapping[str, str]) -> list[Mismatch]:
    """Every request the final config does not honour (``n`` is honoured by absence too)."""
    found = []
    for request in requests.values():
        got = final.get(request.name)
        if request.value == "n":
            if got not in (None, "n"):
                found.append(Mismatch(request, got))
        elif got != request.value:
            found.append(Mismatch(request, got))
    return found


def describe_mismatches(found: list[Mismatch]) -> str:
    """One line listing every dropped or changed option."""
    options = "; ".join(m.describe() for m in found)
    plural = "option" if len(found) == 1 else "options"
    return f"{len(found)} requested kernel {plural} did not survive olddefconfig: {options}"
