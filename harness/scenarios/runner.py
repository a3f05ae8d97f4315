"""Run one registered scenario: boot the guest it needs, run it, keep the evidence.

Used by ``harness run``, the pytest suites, the avocado qualification job and
``harness repro`` alike, so that a scenario's logic exists once.

Conventions:

- **Seeds.** Every run has an integer seed in ``params["seed"]``: the ``seed`` argument,
  else a ``seed`` already in the params (or the scenario's defaults), else a fresh random
  one.  A scenario that randomises anything draws from ``random.Random(params["seed"])``
  so that a repro bundle replays the same choices.  The seed is also in ``verdict.facts``.
- **Overrides.** ``viommu_options`` are merged over the scenario's ``GuestSpec`` options
  (``{"flts": False}``, ``{"stage": "1"}``); ``flavor`` / ``kernel`` / ``initrd`` choose
  another guest image or kernel (qualification's kernel axis); ``kernel_tree`` /
  ``kernel_flavor`` build the kernel from a user's tree or with ``images/kernel/debug.config``.
  A scenario whose machine needs more than its ``GuestSpec`` says registers a
  ``@prepare_hook(name)``.
- **Kernel identity.** ``verdict.facts["kernel"]`` (and the repro bundle's image record)
  say which kernel ran: source (package version, tree path or file), commit, dirty hash,
  kernel flavor, the guest's ``uname -r`` and the sha256 of its ``.config``.
- **Evidence.** The artifacts directory gets ``verdict.json``; a run that fails (a failed
  verdict or an exception, boot failures included) also gets ``repro.json``, a bundle
  that ``harness repro`` replays (see ``harness.repro``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from harness import images, klog, repro
from harness.agent.client import AgentError
from harness.artifacts import new_artifacts_dir
from harness.errors import ConfigError, HarnessError
from harness.guest import Guest
from harness.images.cache import default_root
from harness.images.choice import file_identity
from harness.profiles import guest_machine, make_viommu
from harness.qemu.probe import adapt_machine, probe, resolve_binary
from harness.scenarios.base import EFFECT, Check, Prepared, Scenario, Verdict, get

SEED_PARAM = "seed"
VERDICT_FILE = "verdict.json"

Log = Callable[[str], None]
BeforeTeardown = Callable[[Guest, Verdict], None]


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_seed() -> int:
    """A fresh 32-bit seed (recorded, so the run can be replayed)."""
    return secrets.randbits(32)


def resolve_params(
    scenario: Scenario, params: Mapping[str, Any] | None, seed: int | None = None
) -> dict[str, Any]:
    """The scenario's defaults, overridden by ``params``, with ``seed`` always set."""
    merged = {**scenario.defaults, **(params or {})}
    if seed is not None:
        merged[SEED_PARAM] = seed
    elif merged.get(SEED_PARAM) is None:
        merged[SEED_PARAM] = new_seed()
    if not isinstance(merged[SEED_PARAM], int) or isinstance(merged[SEED_PARAM], bool):
        raise ConfigError(f"param seed={merged[SEED_PARAM]!r}: expected an integer")
    return merged


PrepareHook = Callable[[Prepared, Log], Prepared]

#: scenario name -> a function that adjusts its prepared machine before the boot (e.g. a
#: firmware table override); ``run_scenario`` applies it, a repro bundle records the result
PREPARE_HOOKS: dict[str, PrepareHook] = {}


_Hook = TypeVar("_Hook", bound=PrepareHook)


def prepare_hook(*names: str) -> Callable[[_Hook], _Hook]:
    """Register ``fn(prepared, log) -> Prepared`` for the scenarios ``names``."""

    def register(fn: _Hook) -> _Hook:
        for name in names:
            PREPARE_HOOKS[name] = fn
        return fn

    return register


def image_identity(image: Any) -> dict[str, Any]:
    """The fields of a ``GuestImage`` a bundle or report needs (the kernel's identity too)."""
    return {
        "key": getattr(image, "key", ""),
        "arch": getattr(image, "arch", ""),
        "flavor": getattr(image, "flavor", ""),
        "kernel_release": getattr(image, "kernel_release", ""),
        "kernel_flavor": getattr(image, "kernel_flavor", "default"),
        "kernel": dict(getattr(image, "kernel_identity", {}) or {}),
        "cache": str(default_root()),
    }


def prepare_machine(
    scenario: Scenario,
    arch: str,
    *,
    qemu: str | None = None,
    accel: str = "auto",
    viommu_options: Mapping[str, Any] | None = None,
    flavor: str = "default",
    kernel: Path | None = None,
    initrd: Path | None = None,
    kernel_tree: Path | None = None,
    kernel_flavor: str = "default",
) -> Prepared:
    """The machine for ``scenario`` on ``arch`` with overrides; refuses what QEMU lacks."""
    if arch not in scenario.arches:
        raise ConfigError(
            f"scenario {scenario.name!r} runs on {', '.join(scenario.arches)}, not {arch}"
        )
    spec = scenario.guest(arch)
    options = {**spec.viommu_options, **(viommu_options or {})}
    viommu = make_viommu(spec.viommu, options)  # unknown options fail before the image build
    binary = resolve_binary(arch, qemu)
    image = images.ensure(arch, flavor, kernel_tree=kernel_tree, kernel_flavor=kernel_flavor)
    machine = guest_machine(
        image, viommu, spec.devices, accel=accel, memory_mb=spec.memory_mb, firmware=spec.firmware
    )
    identity = image_identity(image)
    if kernel is not None or initrd is not None:
        machine = replace(machine, kernel=kernel or machine.kernel, initrd=initrd or machine.initrd)
    if kernel is not None:
        identity["kernel_release"] = ""  # another kernel: the guest's uname tells
        identity["kernel_override"] = str(machine.kernel)
        identity["kernel_flavor"] = ""
        identity["kernel"] = file_identity(kernel)
    machine = adapt_machine(machine, probe(binary))  # QEMU 11: its property names
    return Prepared(machine, binary, image.ready_marker, identity, options)


def prepare(
    scenario: Scenario,
    arch: str,
    *,
    qemu: str | None = None,
    accel: str = "auto",
) -> tuple[Any, Any, str]:
    """The image, machine description and QEMU binary for ``scenario`` on ``arch``."""
    prepared = prepare_machine(scenario, arch, qemu=qemu, accel=accel)
    return images.ensure(arch), prepared.machine, prepared.binary


def run_scenario(
    name: str,
    arch: str | None = None,
    params: Mapping[str, Any] | None = None,
    *,
    qemu: str | None = None,
    accel: str = "auto",
    artifacts: Path | None = None,
    on_ready: Callable[[Guest], None] | None = None,
    viommu_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    flavor: str = "default",
    kernel: Path | None = None,
    initrd: Path | None = None,
    kernel_tree: Path | None = None,
    kernel_flavor: str = "default",
    before_teardown: BeforeTeardown | None = None,
    log: Log | None = None,
) -> Verdict:
    """Boot, run and judge; the verdict is written to ``verdict.json``, a failure's bundle too."""
    scenario = get(name)
    arch = arch or scenario.arches[0]
    merged = resolve_params(scenario, params, seed)
    prepared = prepare_machine(
        scenario, arch, qemu=qemu, accel=accel, viommu_options=viommu_options,
        flavor=flavor, kernel=kernel, initrd=initrd, kernel_tree=kernel_tree,
        kernel_flavor=kernel_flavor,
    )  # fmt: skip
    if (hook := PREPARE_HOOKS.get(name)) is not None:
        prepared = hook(prepared, log or _stderr_log)
    artifacts = artifacts or new_artifacts_dir(f"{name}-{arch}")
    return execute(
        scenario,
        prepared,
        merged,
        artifacts,
        on_ready=on_ready,
        before_teardown=before_teardown,
        log=log,
    )


SPLATS_FILE = "kernel-splats.txt"
#: the name of the row ``kernel_health`` adds to every verdict
KERNEL_HEALTH = (
    "guest kernel log since the scenario began: no WARN/BUG/Oops/KASAN/UBSAN/lockdep/stall"
)


def kernel_health(guest: Guest, mark: str) -> Check:
    """The guest kernel's log since ``mark``: no WARN, BUG, Oops, sanitizer, lockdep,
    refcount, RCU-stall or lockup report (``harness.klog``).  A hit fails the row with the
    first line of the first report; every report with its trace goes to the artifacts.
    """
    name = KERNEL_HEALTH
    try:
        text = str(guest.call("system.dmesg", since=mark, timeout=30))
    except AgentError as exc:  # the mark scrolled out, or the agent is gone: read the console
        text = guest.vm.console_text()
        source = f"console (dmesg unreadable: {str(exc).splitlines()[0]})"
    else:
        source = "dmesg"
    splats = klog.find_splats(text)
    if splats:
        path = guest.artifacts / SPLATS_FILE
        path.write_text("\n\n".join(f"[{s.kind}] {s.text()}" for s in splats) + "\n")
        source += f"; {len(splats)} report(s) in {path}"
    got = f"{splats[0].kind}: {splats[0].first_line}" if splats else "no reports"
    return Check(name, "no reports", got, not splats, source, EFFECT)


def run_on_guest(
    scenario: Scenario,
    guest: Guest,
    params: Mapping[str, Any],
    *,
    on_ready: Callable[[Guest], None] | None = None,
) -> Verdict:
    """Run ``scenario`` on a booted ``guest``; its verdict ends with the kernel-health row.

    The kernel log is marked before ``on_ready`` runs, so whatever the hook does to the
    guest is judged too.
    """
    mark = str(guest.call("system.dmesg_mark", timeout=15))
    if on_ready is not None:
        on_ready(guest)
    t0 = time.monotonic()
    verdict = scenario.run(guest, params)
    verdict.add(kernel_health(guest, mark))
    verdict.timings["scenario_s"] = time.monotonic() - t0
    return verdict


def _guest_kernel(guest: Guest) -> str:
    with contextlib.suppress(AgentError, KeyError, TypeError):
        return str(guest.call("system.info", timeout=15)["kernel"])
    return ""


CONFIG_SHA256_COMMAND = (
    "python3 -c 'import gzip, hashlib;"
    ' print(hashlib.sha256(gzip.open("/proc/config.gz").read()).hexdigest())\''
)
"""Prints the sha256 of the running kernel's ``.config`` (the guests have no ``zcat``)."""


def _guest_config_sha256(guest: Guest) -> str:
    """sha256 of the running kernel's ``/proc/config.gz`` (IKCONFIG: its ``.config``)."""
    with contextlib.suppress(AgentError):
        result = guest.run(CONFIG_SHA256_COMMAND, timeout=30)
        digest = result.stdout.split()[0] if result.stdout.split() else ""
        if result.status == 0 and len(digest) == 64:
            return digest
    return ""


def kernel_facts(identity: Mapping[str, Any], guest: Guest) -> dict[str, Any]:
    """The kernel identity a verdict records, completed from the running guest: its
    ``uname -r`` and, for a kernel given as a file, the sha256 of its ``.config``."""
    facts = dict(identity)
    facts["uname_r"] = _guest_kernel(guest)
    if facts.get("file") and not facts.get("config_sha256"):
        facts["config_sha256"] = _guest_config_sha256(guest)
    return facts


def _run_facts(prepared: Prepared, params: Mapping[str, Any], artifacts: Path) -> dict[str, Any]:
    machine = prepared.machine
    facts: dict[str, Any] = {
        "arch": machine.arch,
        "seed": params[SEED_PARAM],
        "viommu": getattr(machine.viommu, "kind", None),
        "viommu_options": prepared.viommu_options,
        "qemu_binary": prepared.binary,
        "image_key": prepared.image.get("key", ""),
        "kernel_release": prepared.image.get("kernel_release", ""),
        "artifacts": str(artifacts),
    }
    with contextlib.suppress(HarnessError, OSError):
        facts["qemu_version"] = probe(prepared.binary).version_text
    return facts


def execute(
    scenario: Scenario,
    prepared: Prepared,
    params: Mapping[str, Any],
    artifacts: Path,
    *,
    on_ready: Callable[[Guest], None] | None = None,
    before_teardown: BeforeTeardown | None = None,
    log: Log | None = None,
) -> Verdict:
    """Boot ``prepared.machine``, run ``scenario`` with ``params`` (seed included), judge.

    Writes ``verdict.json``; on a failed verdict or an exception also ``repro.json``.
    """
    log = log or _stderr_log
    artifacts.mkdir(parents=True, exist_ok=True)
    facts = _run_facts(prepared, params, artifacts)
    guest = Guest(
        prepared.machine,
        artifacts,
        ready_marker=prepared.ready_marker,
        qemu=prepared.binary,
        name=scenario.name,
    )
    t0 = time.monotonic()
    verdict: Verdict | None = None
    try:
        with guest:
            facts["accel"] = guest.vm.accel
            facts["kernel"] = kernel_facts(prepared.image.get("kernel") or {}, guest)
            facts["kernel_release"] = facts["kernel"]["uname_r"] or facts["kernel_release"]
            verdict = run_on_guest(scenario, guest, params, on_ready=on_ready)
            verdict.timings.update(guest.timings)
            for key, value in facts.items():
                verdict.facts.setdefault(key, value)
            if before_teardown is not None:
                before_teardown(guest, verdict)
    except Exception as exc:
        bundle = repro.scenario_bundle(
            scenario, params, prepared, guest, artifacts, verdict=verdict, error=exc
        )
        path = repro.write_bundle(bundle, artifacts)
        log(f"[{scenario.name}] error: {type(exc).__name__}; repro bundle: {path}")
        raise
    verdict.timings["total_s"] = time.monotonic() - t0
    if not verdict.passed:
        bundle = repro.scenario_bundle(
            scenario, params, prepared, guest, artifacts, verdict=verdict
        )
        path = repro.write_bundle(bundle, artifacts)
        verdict.facts["repro_bundle"] = str(path)
        log(f"[{scenario.name}] FAILED; repro bundle: {path}")
        log(f"[{scenario.name}] replay with: python -m harness repro {path}")
    (artifacts / VERDICT_FILE).write_text(json.dumps(verdict.to_json(), indent=1, default=str))
    return verdict
