"""What a scenario is, how it reports, and the registry the CLI, pytest and avocado share.

A scenario is a plain function ``run(guest, params) -> Verdict`` plus the machine it
needs (``GuestSpec``).  Host halves live in ``harness.scenarios.<topic>`` and register
with ``@scenario(...)``; guest halves live in ``harness.scenarios.guest`` and run
through the agent.  Verdicts are lists of ``Check`` rows (name, expected, got) so every
failure says what was expected and what came back.

Each row is of one kind: an **effect** check observes the system under test (bytes a DMA
wrote, a record a queue holds, an errno the kernel returned) and compares it with what a
correct system must produce, predicted independently of the observation; a **setup**
check says a step the story needs worked.  Reports count them apart.  Facts that judge
nothing go in ``Verdict.facts``, never in rows.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.errors import ConfigError
from harness.qemu.description import Machine

EFFECT = "effect"
SETUP = "setup"
CHECK_KINDS = (EFFECT, SETUP)


@dataclass(frozen=True)
class Check:
    """One comparison: ``name`` expected ``expected`` and got ``got``; ``kind`` effect/setup."""

    name: str
    expected: Any
    got: Any
    ok: bool
    note: str = ""
    kind: str = SETUP

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise ConfigError(
                f"check {self.name!r}: kind {self.kind!r} is not one of {CHECK_KINDS}"
            )

    @classmethod
    def equal(cls, name: str, expected: Any, got: Any, note: str = "", kind: str = SETUP) -> Check:
        return cls(name, expected, got, expected == got, note, kind)

    @classmethod
    def effect(cls, name: str, expected: Any, got: Any, note: str = "") -> Check:
        """An effect row: ``got`` observed from the system equals the predicted ``expected``."""
        return cls.equal(name, expected, got, note, EFFECT)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Check:
        """A check row as a guest half returns it (a dict with the same keys)."""
        return cls(
            name=str(row["name"]),
            expected=row.get("expected"),
            got=row.get("got"),
            ok=bool(row["ok"]),
            note=str(row.get("note", "")),
            kind=str(row.get("kind", SETUP)),
        )


@dataclass
class Verdict:
    """A scenario's outcome: its checks, facts worth reporting, and timings."""

    scenario: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def count(self, kind: str) -> int:
        """How many rows of ``kind`` (effect or setup) the verdict has."""
        return sum(1 for c in self.checks if c.kind == kind)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.checks.extend(Check.from_row(r) for r in rows)

    def summary(self) -> str:
        state = "PASS" if self.passed else "FAIL"
        text = (
            f"{self.scenario}: {state} ({len(self.checks)} checks: {self.count(EFFECT)} effect,"
            f" {self.count(SETUP)} setup; {len(self.failures)} failed)"
        )
        for c in self.failures:
            text += f"\n  {c.name}: expected {c.expected!r}, got {c.got!r}"
            text += f" ({c.note})" if c.note else ""
        return text

    def table(self) -> str:
        """All checks, one per line, for humans and logs."""
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"{'check':<{width}}  ok    kind    expected / got"]
        for c in self.checks:
            mark = "ok  " if c.ok else "FAIL"
            lines.append(f"{c.name:<{width}}  {mark}  {c.kind:<6}  {c.expected!r} / {c.got!r}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "passed": self.passed,
            "counts": {kind: self.count(kind) for kind in CHECK_KINDS},
            "checks": [asdict(c) for c in self.checks],
            "facts": self.facts,
            "timings": self.timings,
        }


@dataclass(frozen=True)
class GuestSpec:
    """The machine a scenario needs, per arch: vIOMMU kind, its options, devices, firmware."""

    viommu: str | None
    viommu_options: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[str, ...] = ("edu",)
    firmware: str = "direct"
    memory_mb: int = 2048


RunFn = Callable[[Any, Mapping[str, Any]], Verdict]


@dataclass(frozen=True)
class Scenario:
    """A named, registered scenario."""

    name: str
    tier: int
    arches: tuple[str, ...]
    guest: Callable[[str], GuestSpec]
    run: RunFn
    description: str
    viommu: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: rows a correct run on the reference kernel (7.3) fails: listed findings, each with
    #: its analysis beside the scenario; generic runners expect exactly these to fail
    known_failures: Callable[[], Iterable[str]] | None = None

    def expected_failures(self) -> frozenset[str]:
        """The row names this scenario's verdict is expected to fail (its listed findings)."""
        return frozenset(self.known_failures()) if self.known_failures is not None else frozenset()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tier": self.tier,
            "viommu": self.viommu,
            "arches": list(self.arches),
            "description": self.description,
            "defaults": dict(self.defaults),
        }


REGISTRY: dict[str, Scenario] = {}

#: modules of host halves, imported on first registry use
SCENARIO_MODULES_PACKAGE = "harness.scenarios"


def scenario(
    name: str,
    *,
    tier: int,
    arches: Iterable[str],
    guest: Callable[[str], GuestSpec] | GuestSpec,
    viommu: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    known_failures: Callable[[], Iterable[str]] | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register ``fn`` as scenario ``name``; its docstring's first line describes it."""

    def register(fn: RunFn) -> RunFn:
        old = REGISTRY.get(name)
        # the same function registering again is a module re-executed (e.g. after its
        # sys.modules entry was dropped); a different function taking the name is a bug
        if old is not None and _origin(old.run) != _origin(fn):
            raise ConfigError(
                f"scenario {name!r} registered twice: {_origin(old.run)} and {_origin(fn)}"
            )
        spec = guest
        REGISTRY[name] = Scenario(
            name=name,
            tier=tier,
            arches=tuple(arches),
            guest=spec if callable(spec) else (lambda arch: spec),
            run=fn,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else name,
            viommu=viommu,
            defaults=dict(defaults or {}),
            known_failures=known_failures,
        )
        return fn

    return register


def _origin(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def load_all() -> dict[str, Scenario]:
    """Import every host-half module so the registry is complete."""
    package = importlib.import_module(SCENARIO_MODULES_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__, SCENARIO_MODULES_PACKAGE + "."):
        if info.name.rsplit(".", 1)[-1] not in ("base", "guest", "runner"):
            importlib.import_module(info.name)
    return REGISTRY


def get(name: str) -> Scenario:
    """The scenario called ``name``; ConfigError lists the known ones otherwise."""
    known = load_all()
    if name not in known:
        raise ConfigError(f"unknown scenario {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    return known[name]


@dataclass(frozen=True)
class Prepared:
    """Everything needed to boot a scenario's guest: description, binary, image identity."""

    machine: Machine
    binary: str
    ready_marker: str
    image: dict[str, Any]
    viommu_options: dict[str, Any]
