"""Repro bundles: everything needed to boot a failed run's exact configuration again.

A failed scenario run (``harness.scenarios.runner``) or a failed guest-booting pytest
test (``harness.pytest_plugin``) writes ``repro.json`` into its artifacts directory:

- ``guests``: per guest, the machine description (``Machine.describe()``), the ready
  marker, the QEMU binary (path, version, sha256), the kernel and initramfs (path,
  sha256, release), the image key, the accelerator used and the guest's artifacts;
- ``scenario`` (kind ``scenario``): name, the module that registers it, arch, the
  parameters (seed included) and the vIOMMU option overrides;
  ``test`` (kind ``test``): the pytest node id, root directory and options;
- ``seed``, ``outcome`` (failed check names, error) and ``host``.

``harness repro BUNDLE`` replays it (``harness.replay``).  Problems are reported in one
line naming the field: bad JSON, a missing key, an unknown format, an unknown scenario,
an invalid machine, a kernel/initramfs/QEMU file that no longer exists (errors: the
configuration cannot be booted).  A file whose sha256 differs from the recorded one is a **warning**
by default, because replaying a failure against a rebuilt QEMU or kernel (with a
candidate fix) is the common case; ``--strict`` makes it an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.errors import ConfigError, HarnessError
from harness.qemu.description import Machine, machine_from_dict
from harness.scenarios import base
from harness.scenarios.base import Prepared, Scenario, Verdict

if TYPE_CHECKING:
    from harness.guest import Guest

BUNDLE_FILE = "repro.json"
FORMAT = "viommu-harness-repro/1"
KINDS = ("scenario", "test")


class BundleError(ConfigError):
    """A repro bundle cannot be used: the message names the file and the problem."""


# -- identities ------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The sha256 of a file, remembered per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def file_identity(path: Path | str) -> dict[str, Any]:
    """Path, size and sha256 of a file (``sha256`` is None when it cannot be read)."""
    path = Path(path)
    try:
        return {"path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}
    except OSError:
        return {"path": str(path), "size": None, "sha256": None}


def qemu_identity(binary: str) -> dict[str, Any]:
    """The QEMU binary's path, sha256 and probed version."""
    from harness.qemu.probe import probe

    identity = file_identity(binary)
    identity["version"] = ""
    with contextlib.suppress(HarnessError, OSError):
        identity["version"] = probe(binary).version_text
    return identity


def guest_record(
    *,
    name: str,
    machine: Machine,
    binary: str,
    ready_marker: str,
    image: Mapping[str, Any],
    accel_used: str | None,
    artifacts: Path,
) -> dict[str, Any]:
    """One guest of a bundle: description, identities of what it booted, artifacts."""
    kernel = file_identity(machine.kernel)
    kernel["release"] = image.get("kernel_release", "")
    # where the kernel came from: package version / tree commit + dirty hash / file
    for name, value in dict(image.get("kernel") or {}).items():
        kernel.setdefault(name, value)
    return {
        "name": name,
        "machine": machine.describe(),
        "ready_marker": ready_marker,
        "qemu": qemu_identity(binary),
        "kernel": kernel,
        "initrd": file_identity(machine.initrd),
        "image": dict(image),
        "accel_used": accel_used,
        "artifacts": str(artifacts),
    }


def _host() -> dict[str, Any]:
    return {
        "node": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "harness": __version__,
    }


def _outcome(verdict: Verdict | None, error: BaseException | None) -> dict[str, Any]:
    return {
        "passed": False,
        "failed_checks": [c.name for c in verdict.failures] if verdict is not None else [],
        "summary": verdict.summary() if verdict is not None else "",
        "error": f"{type(error).__name__}: {error}".splitlines()[0] if error else None,
    }


def _base(kind: str, seed: int | None, guests: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": seed,
        "guests": guests,
        "host": _host(),
    }


def scenario_bundle(
    scenario: Scenario,
    params: Mapping[str, Any],
    prepared: Prepared,
    guest: Guest | None,
    artifacts: Path,
    *,
    verdict: Verdict | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """The bundle of a failed scenario run."""
    record = guest_record(
        name=scenario.name,
        machine=prepared.machine,
        binary=prepared.binary,
        ready_marker=prepared.ready_marker,
        image=prepared.image,
        accel_used=guest.vm.accel if guest is not None else None,
        artifacts=artifacts,
    )
    bundle = _base("scenario", params.get("seed"), [record])
    bundle["scenario"] = {
        "name": scenario.name,
        "module": getattr(scenario.run, "__module__", ""),
        "arch": prepared.machine.arch,
        "params": dict(params),
        "viommu_options": dict(prepared.viommu_options),
    }
    bundle["outcome"] = _outcome(verdict, error)
    return bundle


def failed_test_bundle(
    *,
    nodeid: str,
    rootdir: Path,
    options: Sequence[str],
    seed: int | None,
    guests: list[dict[str, Any]],
    error: str | None,
) -> dict[str, Any]:
    """The bundle of a failed guest-booting pytest test."""
    bundle = _base("test", seed, guests)
    bundle["test"] = {"nodeid": nodeid, "rootdir": str(rootdir), "options": list(options)}
    bundle["outcome"] = {"passed": False, "failed_checks": [], "summary": "", "error": error}
    return bundle


def write_bundle(bundle: Mapping[str, Any], directory: Path) -> Path:
    """Write ``repro.json`` into ``directory`` atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / BUNDLE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(bundle, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


# -- reading and validation ------------------------------------------------------------


@dataclass(frozen=True)
class GuestRecord:
    """One validated guest entry of a bundle."""

    name: str
    machine: Machine
    ready_marker: str
    qemu: dict[str, Any]
    kernel: dict[str, Any]
    initrd: dict[str, Any]
    image: dict[str, Any]
    accel_used: str | None
    artifacts: str


@dataclass(frozen=True)
class Bundle:
    """A validated repro bundle."""

    path: Path
    kind: str
    seed: int | None
    guests: tuple[GuestRecord, ...]
    outcome: dict[str, Any]
    scenario: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[str]:
        return [str(name) for name in self.outcome.get("failed_checks") or []]


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ConfigError(f"missing key {where}{key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        names = "/".join(t.__name__ for t in _types(kind))
        raise ConfigError(f"{where}{key!r}: expected {names}, got {type(value).__name__}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _guest(raw: Any, index: int) -> GuestRecord:
    where = f"guests[{index}]."
    if not isinstance(raw, dict):
        raise ConfigError(f"guests[{index}]: expected an object")
    machine_raw = _need(raw, "machine", dict, where)
    try:
        machine = machine_from_dict(machine_raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}machine: {exc}") from None
    qemu = _need(raw, "qemu", dict, where)
    kernel = _need(raw, "kernel", dict, where)
    initrd = _need(raw, "initrd", dict, where)
    for key, entry in (("qemu", qemu), ("kernel", kernel), ("initrd", initrd)):
        _need(entry, "path", str, f"{where}{key}.")
        _need(entry, "sha256", (str, type(None)), f"{where}{key}.")
    return GuestRecord(
        name=str(raw.get("name", f"guest{index}")),
        machine=machine,
        ready_marker=_need(raw, "ready_marker", str, where),
        qemu=qemu,
        kernel=kernel,
        initrd=initrd,
        image=dict(raw.get("image") or {}),
        accel_used=raw.get("accel_used"),
        artifacts=str(raw.get("artifacts", "")),
    )


def parse_bundle(data: Any, path: Path) -> Bundle:
    """Validate a decoded bundle; ``BundleError`` names the first problem."""
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a JSON object, got {type(data).__name__}")
        fmt = _need(data, "format", str, "")
        if fmt != FORMAT:
            raise ConfigError(f"unsupported format {fmt!r} (this harness reads {FORMAT!r})")
        kind = _need(data, "kind", str, "")
        if kind not in KINDS:
            raise ConfigError(f"'kind': {kind!r} is not one of {', '.join(KINDS)}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ConfigError(f"'seed': expected an integer, got {type(seed).__name__}")
        guests_raw = _need(data, "guests", list, "")
        if not guests_raw:
            raise ConfigError("'guests': empty (a bundle describes at least one guest)")
        guests = tuple(_guest(g, i) for i, g in enumerate(guests_raw))
        outcome = data.get("outcome") or {}
        if not isinstance(outcome, dict):
            raise ConfigError("'outcome': expected an object")
        scenario: dict[str, Any] = {}
        test: dict[str, Any] = {}
        if kind == "scenario":
            scenario = _need(data, "scenario", dict, "")
            _need(scenario, "name", str, "scenario.")
            _need(scenario, "arch", str, "scenario.")
            _need(scenario, "params", dict, "scenario.")
            if not isinstance(scenario.get("viommu_options") or {}, dict):
                raise ConfigError("scenario.'viommu_options': expected an object")
            if len(guests) != 1:
                raise ConfigError(f"'guests': a scenario bundle has one guest, not {len(guests)}")
        else:
            test = _need(data, "test", dict, "")
            _need(test, "nodeid", str, "test.")
            _need(test, "rootdir", str, "test.")
            _need(test, "options", list, "test.")
    except ConfigError as exc:
        raise BundleError(f"{path}: {exc}") from None
    return Bundle(path, kind, seed, guests, outcome, scenario, test, data)


def read_bundle(path: Path | str) -> Bundle:
    """Read and validate a bundle (a ``repro.json`` or the directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / BUNDLE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise BundleError(f"{path}: not valid JSON (nested too deeply)") from None
    return parse_bundle(data, path)


def check_files(bundle: Bundle, *, qemu: str | None = None, strict: bool = False) -> list[str]:
    """Missing files are errors; changed files (sha256) are warnings, errors if ``strict``."""
    warnings: list[str] = []
    for i, guest in enumerate(bundle.guests):
        entries = [("kernel", guest.kernel), ("initrd", guest.initrd)]
        if qemu is None:
            entries.append(("qemu", guest.qemu))
        for what, entry in entries:
            path = Path(entry["path"])
            where = f"guests[{i}].{what}"
            if not path.is_file():
                raise BundleError(f"{bundle.path}: {where} {path} no longer exists")
            recorded = entry.get("sha256")
            if recorded and sha256_file(path) != recorded:
                problem = (
                    f"{where} {path} changed since the failed run"
                    f" (sha256 {sha256_file(path)[:12]}, recorded {recorded[:12]})"
                )
                if strict:
                    raise BundleError(f"{bundle.path}: {problem}")
                warnings.append(problem)
    return warnings


def resolve_scenario(bundle: Bundle) -> Scenario:
    """The bundle's scenario: from the registry, importing its recorded module if needed."""
    name = bundle.scenario["name"]
    module = str(bundle.scenario.get("module") or "")
    base.load_all()
    if name not in base.REGISTRY and module:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise BundleError(
                f"{bundle.path}: unknown scenario {name!r}"
                f" (its module {module!r} does not import: {type(exc).__name__}: {exc})"
            ) from None
    if name not in base.REGISTRY:
        raise BundleError(
            f"{bundle.path}: unknown scenario {name!r}"
            f" (known: {', '.join(sorted(base.REGISTRY)) or 'none'})"
        )
    return base.REGISTRY[name]


def with_kernel(
    bundle: Bundle, kernel: Path, identity: Mapping[str, Any], release: str = ""
) -> Bundle:
    """The bundle with its guests booting ``kernel`` instead of the recorded one (``harness
    repro --kernel/--kernel-tree/--kernel-flavor``); the identity replaces the recorded one."""
    guests = []
    for record in bundle.guests:
        entry = {**file_identity(kernel), "release": release, **dict(identity)}
        image = {**record.image, "kernel": dict(identity), "kernel_release": release,
                 "kernel_override": str(kernel)}  # fmt: skip
        machine = replace(record.machine, kernel=Path(kernel))
        guests.append(replace(record, machine=machine, kernel=entry, image=image))
    return replace(bundle, guests=tuple(guests))
