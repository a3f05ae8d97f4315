"""Expected non-passing selftest results, each with its reason, and how a result is judged.

``expected.toml`` (beside this module) lists every skip or failure the harness's guests
are known to produce, with the reason checked in the source (an upstream commit, a QEMU
limitation, a feature the emulated IOMMU lacks).  A result is then one of:

    pass          passed, as it should
    expected      skipped / failed / errored as an entry says (reported with its reason)
    unexpected    failed, errored or skipped with no entry: the run fails
    fixed         an entry expected a skip or failure but the test passed: the run fails
                  until the entry is removed, so the file never goes stale
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError
from harness.kselftest.tap import OUTCOMES

EXPECTED_FILE = Path(__file__).with_name("expected.toml")
_JUDGEMENTS = ("pass", "expected", "unexpected", "fixed")


@dataclass(frozen=True)
class Expectation:
    """One entry: which results (globs; ``test`` and ``where`` may list several) end how, why."""

    binary: str
    test: tuple[str, ...]
    where: tuple[str, ...]
    outcome: str
    reason: str

    def matches(self, binary: str, test: str, where: str) -> bool:
        """Whether this entry covers ``test`` of ``binary`` run in configuration ``where``."""
        return (
            fnmatch.fnmatchcase(binary, self.binary)
            and any(fnmatch.fnmatchcase(test, pattern) for pattern in self.test)
            and any(fnmatch.fnmatchcase(where, pattern) for pattern in self.where)
        )


@dataclass(frozen=True)
class Judgement:
    """How one result is judged: ``pass``/``expected``/``unexpected``/``fixed`` and why."""

    status: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether this result lets the run pass."""
        return self.status in ("pass", "expected")


def load(path: Path = EXPECTED_FILE) -> list[Expectation]:
    """The entries of an expected-results file; ConfigError names a bad entry."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    entries = []
    for i, raw in enumerate(data.get("expected", [])):
        where = f"{path.name}: expected[{i}]"
        missing = [key for key in ("binary", "outcome", "reason") if not raw.get(key)]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        outcome = raw["outcome"]
        if outcome not in OUTCOMES or outcome == "pass":
            raise ConfigError(f"{where}: outcome {outcome!r} is not one of skip, fail, error")
        configs = raw.get("where", ["*"])
        if isinstance(configs, str):
            configs = [configs]
        tests = raw.get("test", ["*"])
        if isinstance(tests, str):
            tests = [tests]
        unknown = set(raw) - {"binary", "test", "where", "outcome", "reason"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        entries.append(
            Expectation(
                binary=str(raw["binary"]),
                test=tuple(str(t) for t in tests),
                where=tuple(str(c) for c in configs),
                outcome=str(outcome),
                reason=" ".join(str(raw["reason"]).split()),
            )
        )
    return entries


def judge(
    entries: list[Expectation], binary: str, test: str, where: str, outcome: str, reason: str = ""
) -> Judgement:
    """Judge one result of ``test`` (``binary``, configuration ``where``) against the entries."""
    entry = next((e for e in entries if e.matches(binary, test, where)), None)
    if outcome in ("pass", "xfail", "xpass"):
        if entry is not None:
            return Judgement("fixed", f"expected {entry.outcome} ({entry.reason}) but it passed")
        return Judgement("pass")
    if entry is not None and entry.outcome == outcome:
        return Judgement("expected", entry.reason)
    if entry is not None:
        return Judgement(
            "unexpected", f"{outcome} ({reason}) where {entry.outcome} was expected: {entry.reason}"
        )
    return Judgement("unexpected", f"{outcome}: {reason}" if reason else outcome)
