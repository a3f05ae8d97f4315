"""Run the selftest binaries in harness guests: one guest per vIOMMU configuration.

Each guest is the arch's image with an ``igb`` behind the vIOMMU (bound to vfio-pci),
hugepages reserved at boot (2 MiB and one 1 GiB page) and vfio-pci's SR-IOV switch on.
The binaries go in over SFTP; each runs on a pseudo-terminal so its TAP lines arrive as
it prints them, and every finished test is handed to ``on_result`` at once.  A guest that
dies or wedges (the harness's hang bound) ends its configuration: the tests that finished
are kept, the one running becomes an ``error`` naming the cause, and the binaries not
run yet are reported as such; the next configuration gets a fresh guest.
"""

from __future__ import annotations

import codecs
import hashlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import images
from harness.agent.client import AgentConnectionLostError, AgentError
from harness.artifacts import new_artifacts_dir
from harness.guest import Guest
from harness.kselftest.build import SelftestBuild
from harness.kselftest.expected import Expectation, Judgement, judge
from harness.kselftest.junit import Case
from harness.kselftest.matrix import DEFAULT_TIMEOUT, TIMEOUTS, Selection, ViommuConfig
from harness.kselftest.tap import Outcome, TapParser, TapReport, TapResult
from harness.profiles import guest_machine, make_viommu
from harness.qemu.description import Igb
from harness.qemu.machine import MachineError
from harness.qemu.probe import adapt_machine, probe, resolve_binary

#: guest memory: one 1 GiB page + 256 2 MiB pages reserved, the rest for the root fs
MEMORY_MB = 4096
KERNEL_ARGS = (
    "hugepagesz=2M hugepages=256 hugepagesz=1G hugepages=1 default_hugepagesz=2M"
    " vfio_pci.enable_sriov=1"
)
GUEST_DIR = "/root/kselftest"
#: seconds without a line of output after which a guest counts as wedged: kselftest's own
#: per-test timeout is at most 60 s in these suites (``TEST_F_TIMEOUT(..., memcpy_storm,
#: 60)``), after which it prints the timeout; a guest silent three times as long is stuck
SILENCE_TIMEOUT = 180.0


@dataclass
class BinaryRun:
    """One binary's run in one configuration: its TAP report, exit status, and timing."""

    suite: str
    binary: str
    config: ViommuConfig
    report: TapReport = field(default_factory=TapReport)
    status: int | None = None
    wall_s: float = 0.0
    lost: str | None = None
    raw: Path | None = None
    judgements: list[Judgement] = field(default_factory=list)

    def cases(self) -> list[Case]:
        """The results with their judgements, for JUnit and reports."""
        return [
            Case(self.suite, self.binary, self.config.where, result, judged)
            for result, judged in zip(self.report.results, self.judgements, strict=True)
        ]

    def counts(self) -> dict[str, int]:
        """pass/fail/skip/error counts plus how many were expected and unexpected."""
        found = self.report.counts()
        found["expected"] = sum(j.status == "expected" for j in self.judgements)
        found["unexpected"] = sum(not j.ok for j in self.judgements)
        return found

    @property
    def ok(self) -> bool:
        """Every result passed or was expected, and the binary ran to its end."""
        return self.lost is None and all(j.ok for j in self.judgements)


@dataclass
class ConfigRun:
    """One guest: its configuration, artifacts, boot time and binaries' runs."""

    config: ViommuConfig
    artifacts: Path
    runs: list[BinaryRun] = field(default_factory=list)
    boot_s: float = 0.0
    error: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


ResultHook = Callable[[BinaryRun, TapResult, Judgement], None]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _judge_all(run: BinaryRun, expected: list[Expectation], start: int = 0) -> None:
    for result in run.report.results[start:]:
        run.judgements.append(
            judge(
                expected,
                run.binary,
                result.name,
                run.config.where,
                result.outcome,
                result.reason,
            )
        )


def _whole_binary_result(run: BinaryRun, output: str) -> None:
    """A binary that reported no test (skipped whole, crashed) gets one result for itself."""
    if run.report.results:
        if run.status not in (0, 4, None) and not any(r.failed for r in run.report.results):
            run.report.results.append(
                TapResult(
                    number=len(run.report.results) + 1,
                    name=f"{run.binary} (exit status)",
                    outcome="error",
                    reason=f"exited with status {run.status} without a failing test",
                )
            )
        return
    last = [line for line in output.splitlines() if line.strip()][-3:]
    outcome: Outcome
    if run.status == 4:
        outcome, reason = "skip", (last[-1] if last else "exit status 4 (KSFT_SKIP)")
    else:
        outcome, reason = "error", f"exited with status {run.status} and reported no test"
    run.report.results.append(
        TapResult(
            number=1, name=run.binary, outcome=outcome, reason=reason.strip(), diagnostics=last
        )
    )


def prepare_guest(guest: Guest, build: SelftestBuild, selection: Selection) -> dict[str, Any]:
    """Copy the selected binaries in (checking their hashes), bind the igb to vfio-pci."""
    facts: dict[str, Any] = {"copied_bytes": 0}
    started = time.monotonic()
    for suite, names in selection.binaries.items():
        guest.run(f"mkdir -p {GUEST_DIR}/{suite}", timeout=60)
        for name in names:
            local = build.binary(suite, name)
            assert guest.agent is not None
            facts["copied_bytes"] += guest.agent.put_file(
                local, f"{GUEST_DIR}/{suite}/{name}", mode=0o755
            )
    hashes = guest.run(f"sha256sum {GUEST_DIR}/*/*", timeout=120)
    got = {Path(p).name: h for h, p in (line.split() for line in hashes.stdout.splitlines())}
    for suite, names in selection.binaries.items():
        for name in names:
            if got.get(name) != _sha256(build.binary(suite, name)):
                raise AgentError(f"{name}: the guest's copy has another sha256 than the host's")
    facts["copy_s"] = round(time.monotonic() - started, 1)
    if "vfio" in selection.binaries:
        found = guest.call("pci.find", vendor=Igb.VENDOR_ID, device=Igb.DEVICE_ID)
        if not found:
            raise AgentError("no igb (8086:10c9) in the guest: the machine lacks the device")
        bdf = found[0]
        guest.call("pci.bind_vfio", bdf=bdf)
        facts["igb"] = bdf
        facts["iommu_group"] = guest.run(
            f"readlink /sys/bus/pci/devices/{bdf}/iommu_group", timeout=30
        ).stdout.strip()
    meminfo = guest.run("grep -i huge /proc/meminfo; ls /sys/kernel/mm/hugepages", timeout=30)
    facts["hugepages"] = meminfo.stdout.strip()
    return facts


def run_binary(
    guest: Guest,
    run: BinaryRun,
    tests: tuple[str, ...],
    env: dict[str, str],
    expected: list[Expectation],
    on_result: ResultHook,
    tap_dir: Path,
    timeout: float,
    silence: float = SILENCE_TIMEOUT,
) -> None:
    """Run one binary in ``guest``, streaming its TAP; fills ``run`` even when the guest dies.

    The guest counts as lost when it dies or hangs (the machine's own bounds), when the
    binary prints nothing for ``silence`` seconds, or at ``timeout``.
    """
    parser = TapParser(clock=time.monotonic)
    run.report = parser.report  # filled as lines arrive: a lost guest keeps what finished
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    tap_dir.mkdir(parents=True, exist_ok=True)
    run.raw = tap_dir / f"{run.binary}.tap"
    raw = run.raw.open("w")

    def feed(chunk: bytes) -> None:
        nonlocal pending
        pending += decoder.decode(chunk).replace("\r", "")
        *lines, pending = pending.split("\n")
        for line in lines:
            raw.write(line + "\n")
            for result in parser.feed(line):
                _judge_all(run, expected, len(run.judgements))
                on_result(run, result, run.judgements[-1])
        raw.flush()

    args = " ".join(f"-r {shlex.quote(t)}" for t in tests)
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = f"cd {GUEST_DIR}/{run.suite} && {assignments} ./{run.binary} {args}".strip()
    started = time.monotonic()
    output = ""
    try:
        done = guest.run(command, timeout=timeout, on_output=feed, pty=True, idle_timeout=silence)
        run.status = done.status
        output = done.stdout
    except (AgentConnectionLostError, MachineError) as exc:
        run.lost = str(exc).splitlines()[0]
    finally:
        run.wall_s = round(time.monotonic() - started, 1)
        if pending:
            feed(b"\n")
        raw.close()
    before = len(run.report.results)
    run.report = parser.finish(cause=run.lost)
    if run.lost is None:
        _whole_binary_result(run, output)
    _judge_all(run, expected, len(run.judgements))
    for result, judged in zip(run.report.results[before:], run.judgements[before:], strict=True):
        on_result(run, result, judged)


def run_config(
    config: ViommuConfig,
    build: SelftestBuild,
    selection: Selection,
    expected: list[Expectation],
    root: Path,
    on_result: ResultHook,
    *,
    log: Callable[[str], None],
    accel: str = "auto",
    qemu: str | None = None,
    timeout: float | None = None,
    image: images.GuestImage | None = None,
) -> ConfigRun:
    """Boot one guest for ``config`` (``image``, else the default one) and run the selected
    binaries in it, in order."""
    image = image or images.ensure(config.arch)
    viommu = make_viommu(config.kind, config.options)
    devices = ["igb"] if "vfio" in selection.binaries else []
    machine = guest_machine(
        image, viommu, devices, accel=accel, memory_mb=MEMORY_MB, append=KERNEL_ARGS
    )
    binary = resolve_binary(config.arch, qemu)
    machine = adapt_machine(machine, probe(binary))
    artifacts = new_artifacts_dir(f"{config.arch}-{config.label}", root=root)
    outcome = ConfigRun(config, artifacts)
    pending = [
        BinaryRun(suite, name, config)
        for suite, names in selection.binaries.items()
        for name in names
    ]
    started = time.monotonic()
    try:
        with Guest(
            machine, artifacts, ready_marker=image.ready_marker, qemu=binary, log=log
        ) as guest:
            outcome.boot_s = round(time.monotonic() - started, 1)
            outcome.facts = prepare_guest(guest, build, selection)
            env = {"VFIO_SELFTESTS_BDF": outcome.facts["igb"]} if "igb" in outcome.facts else {}
            while pending:
                run = pending.pop(0)
                outcome.runs.append(run)
                limit = timeout or TIMEOUTS.get(run.binary, DEFAULT_TIMEOUT)
                log(f"{config.where}: {run.binary} ...")
                run_binary(
                    guest,
                    run,
                    selection.tests.get(run.binary, ()),
                    env,
                    expected,
                    on_result,
                    artifacts / "tap",
                    limit,
                )
                if run.lost is not None:
                    outcome.error = f"{run.binary}: {run.lost}"
                    break
    except (AgentError, MachineError) as exc:
        outcome.error = outcome.error or str(exc).splitlines()[0]
    for run in pending:  # never started: the guest was lost first
        run.lost = f"not run: {outcome.error}"
        run.report.results.append(
            TapResult(number=1, name=run.binary, outcome="error", reason=run.lost)
        )
        run.judgements.append(Judgement("unexpected", run.lost))
        outcome.runs.append(run)
    return outcome


def run_matrix(
    chosen: list[ViommuConfig],
    build: SelftestBuild,
    selection: Selection,
    expected: list[Expectation],
    root: Path,
    on_result: ResultHook,
    *,
    with_mock: bool = True,
    **options: Any,
) -> list[ConfigRun]:
    """Run ``selection`` in a guest per configuration, in order (``run_config``'s options).

    The iommu suite drives the ``IOMMUFD_TEST`` mock, not the vIOMMU: only the first
    configuration runs it (none does with ``with_mock=False``, as in a qualification
    cell that is not its arch's first).
    """
    outcomes: list[ConfigRun] = []
    for config in chosen:
        picked = selection
        if not with_mock and "iommu" in selection.binaries:
            rest = {s: b for s, b in selection.binaries.items() if s != "iommu"}
            if not rest:
                break
            picked = Selection(rest, selection.tests)
        outcomes.append(run_config(config, build, picked, expected, root, on_result, **options))
        with_mock = False
    return outcomes
