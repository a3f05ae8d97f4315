"""What a QEMU binary can do: version, machines, devices and their properties, accelerators.

Probed once per binary (path, size, mtime) by starting it with ``-machine none`` and
asking over QMP; the answer is cached as JSON.  ``resolve_binary`` turns ``--qemu`` into
the binary to run (``installed`` / ``10`` / ``11`` / a path; see ``harness.qemu.installs``).
``adapt_machine`` gives a description the property names this QEMU uses, and
``require_properties`` refuses one that needs a property this QEMU lacks, naming the
property and the version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.cachedir import cache_dir
from harness.errors import ConfigError, HarnessError, PrerequisiteError
from harness.qemu import installs, lifetime
from harness.qemu.argv import QEMU_BINARIES
from harness.qemu.description import IntelIommu, Machine, SmmuV3, VfioPci
from harness.qemu.qmp import QmpSession
from harness.qemu.rundir import private_run_dir, remove_run_dir

#: devices whose property lists the harness needs
PROBED_DEVICES = (
    "intel-iommu", "arm-smmuv3", "edu", "igb", "vfio-pci", "pvpanic", "pvpanic-pci",
)  # fmt: skip
#: trace events recorded (the families scenarios switch on over QMP)
PROBED_TRACE_EVENTS = ("smmu*", "vtd_*", "iommufd_*", "vfio_*")
#: bump when what a probe records changes (part of the cache key)
PROBE_FORMAT = 2


class MissingCapabilityError(ConfigError):
    """The QEMU in use lacks a device or property the description needs."""


class QemuNotFoundError(PrerequisiteError):
    """No QEMU binary for the arch (or the one named) is installed."""


@dataclass(frozen=True)
class QemuCapabilities:
    """The probed facts about one QEMU binary."""

    binary: str
    version: tuple[int, int, int]
    package: str
    devices: frozenset[str]
    properties: dict[str, frozenset[str]]
    accelerators: frozenset[str]
    #: trace events matching ``PROBED_TRACE_EVENTS``
    trace_events: frozenset[str] = frozenset()

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version)) + (f" ({self.package})" if self.package else "")

    def has_property(self, device: str, prop: str) -> bool:
        return prop in self.properties.get(device, frozenset())

    def to_json(self) -> dict[str, Any]:
        return {
            "binary": self.binary,
            "version": list(self.version),
            "package": self.package,
            "devices": sorted(self.devices),
            "properties": {k: sorted(v) for k, v in self.properties.items()},
            "accelerators": sorted(self.accelerators),
            "trace_events": sorted(self.trace_events),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QemuCapabilities:
        return cls(
            binary=data["binary"],
            version=(int(data["version"][0]), int(data["version"][1]), int(data["version"][2])),
            package=data["package"],
            devices=frozenset(data["devices"]),
            properties={k: frozenset(v) for k, v in data["properties"].items()},
            accelerators=frozenset(data["accelerators"]),
            trace_events=frozenset(data.get("trace_events", ())),
        )


def resolve_binary(arch: str, qemu: str | None = None) -> str:
    """Absolute path of the QEMU to run for ``arch`` guests (``--qemu`` or the installed one).

    ``qemu`` is None / ``installed`` / ``10`` (the host's QEMU; ``10`` also checks its
    version), ``11`` (QEMU 11 from the cached trixie tree, built on first use), a path
    or a program name; a binary in a QEMU build directory is returned as a launcher that
    adds the build tree's firmware (``harness.qemu.installs``).  A binary the caller
    named that does not exist is a ConfigError (their mistake); the installed one
    missing is a QemuNotFoundError (a prerequisite: tests skip on it).
    """
    if arch not in QEMU_BINARIES:
        raise ConfigError(f"unknown guest arch {arch!r} (known: {', '.join(QEMU_BINARIES)})")
    spec = None if qemu is None else str(qemu)
    if spec is None or spec in installs.INSTALLED:
        path = shutil.which(QEMU_BINARIES[arch])
        if path is None:
            raise QemuNotFoundError(
                f"QEMU binary {QEMU_BINARIES[arch]!r} not found (scripts/setup.sh installs it)"
            )
        binary = os.path.realpath(path)
        if spec is not None and spec != "installed":
            have = probe(binary)
            if str(have.version[0]) != spec:
                raise ConfigError(
                    f"--qemu {spec}: the installed QEMU is {have.version_text} ({binary})"
                )
        return binary
    if spec == installs.TRIXIE:
        return str(installs.ensure_trixie(arch))
    path = shutil.which(spec)
    if path is None:
        raise ConfigError(
            f"QEMU binary {spec!r} not found (named by --qemu or the matrix;"
            f" or name one of: {', '.join(installs.NAMED)})"
        )
    real = Path(os.path.realpath(path))
    launcher = installs.build_dir_launcher(real)
    return str(launcher if launcher is not None else real)


def _cache_path(binary: str) -> Path:
    st = os.stat(binary)
    what = [PROBE_FORMAT, *PROBED_DEVICES, *PROBED_TRACE_EVENTS]
    listed = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:8]
    key = f"{binary.strip('/').replace('/', '_')}-{st.st_size}-{int(st.st_mtime)}-{listed}"
    return cache_dir("qemu-probe") / f"{key}.json"


def probe(binary: str) -> QemuCapabilities:
    """Probe (or load from the cache) the capabilities of ``binary``."""
    cache = _cache_path(binary)
    try:
        return QemuCapabilities.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError):
        pass
    caps = _probe_live(binary)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(caps.to_json(), indent=1) + "\n")
    tmp.replace(cache)
    return caps


def _probe_live(binary: str) -> QemuCapabilities:
    run_dir = private_run_dir("viommu-probe-")
    try:
        return _probe_in(binary, run_dir)
    finally:
        remove_run_dir(run_dir)


def _probe_in(binary: str, run_dir: Path) -> QemuCapabilities:
    sock = run_dir / "qmp.sock"
    argv = [binary, "-machine", "none", "-nodefaults", "-display", "none",
            "-qmp", f"unix:{sock},server=on,wait=off"]  # fmt: skip
    try:
        proc = lifetime.popen(  # dies with the harness even if it is SIGKILLed
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            umask=0o077,
        )  # fmt: skip
    except OSError as exc:
        raise HarnessError(f"probing {binary} failed: cannot run it ({exc})") from None

    def exited() -> str | None:
        code = proc.poll()
        return None if code is None else f"QEMU exited with status {code}"

    qmp = QmpSession()
    try:
        qmp.connect(sock, timeout=20.0, abort=exited)
        ver = qmp.execute("query-version")
        types = {t["name"] for t in qmp.execute("qom-list-types", {"abstract": False})}
        props: dict[str, frozenset[str]] = {}
        for dev in PROBED_DEVICES:
            if dev in types:
                listed = qmp.execute("device-list-properties", {"typename": dev})
                props[dev] = frozenset(p["name"] for p in listed)
        accels = {t.removesuffix("-accel") for t in types if t.endswith("-accel")}
        events = {
            str(e["name"])
            for pattern in PROBED_TRACE_EVENTS
            for e in qmp.execute("trace-event-get-state", {"name": pattern})
        }
        q = ver["qemu"]
        return QemuCapabilities(
            binary=binary,
            version=(q["major"], q["minor"], q["micro"]),
            package=str(ver.get("package", "")).strip(),
            devices=frozenset(types),
            properties=props,
            accelerators=frozenset(accels),
            trace_events=frozenset(events),
        )
    except HarnessError as exc:
        err = ""
        if proc.poll() is not None and proc.stderr is not None:
            err = proc.stderr.read().decode(errors="replace")
        raise HarnessError(f"probing {binary} failed: {exc} {err.strip()}".strip()) from None
    finally:
        qmp.close()
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def required_properties(machine: Machine) -> list[tuple[str, str]]:
    """(device, property) pairs the description's command line uses."""
    needs: list[tuple[str, str]] = []
    viommu = machine.viommu
    if isinstance(viommu, IntelIommu):
        needs += [("intel-iommu", p) for p in viommu.properties()]
    elif isinstance(viommu, SmmuV3):
        needs += [("arm-smmuv3", p) for p in viommu.properties()]
    for dev in machine.devices:
        if isinstance(dev, VfioPci) and dev.backend == "iommufd":
            needs.append(("vfio-pci", "iommufd"))
    return needs


def adapt_machine(machine: Machine, caps: QemuCapabilities) -> Machine:
    """``machine`` with the vIOMMU's property names this QEMU uses, checked by require_properties.

    QEMU 11 renamed intel-iommu's ``x-scalable-mode`` / ``x-flts`` to ``scalable-mode`` /
    ``fsts`` (same meaning); whichever pair this QEMU has is used.  Anything else it
    lacks is a MissingCapabilityError naming the property and the QEMU version.
    """
    viommu = machine.viommu
    if isinstance(viommu, IntelIommu):
        new = caps.has_property("intel-iommu", "fsts") and not caps.has_property(
            "intel-iommu", "x-flts"
        )
        if new != viommu.qemu11_names:
            machine = machine.with_(viommu=replace(viommu, qemu11_names=new))
    require_properties(machine, caps)
    return machine


def require_properties(machine: Machine, caps: QemuCapabilities) -> None:
    """Refuse a description this QEMU cannot run, naming the property and the version."""
    for device, prop in required_properties(machine):
        if device not in caps.devices:
            raise MissingCapabilityError(
                f"QEMU {caps.version_text} has no device {device!r} ({caps.binary})"
            )
        if not caps.has_property(device, prop):
            raise MissingCapabilityError(
                f"QEMU {caps.version_text} lacks property {device}.{prop} ({caps.binary})"
            )
