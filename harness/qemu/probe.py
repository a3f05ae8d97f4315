"""What a QEMU binary can do: version, machines, devices and their properties, accelerators.

Probed once per binary (path, size, mtime) by starting it with ``-machine none`` and
asking over QMP; the answer is cached as JSON.  ``require_properties`` refuses a
description that needs a property this QEMU lacks, naming the property and the version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cachedir import cache_dir
from harness.errors import ConfigError, HarnessError, PrerequisiteError
from harness.qemu import lifetime
from harness.qemu.argv import QEMU_BINARIES
from harness.qemu.description import IntelIommu, Machine, SmmuV3, VfioPci
from harness.qemu.qmp import QmpSession
from harness.qemu.rundir import private_run_dir, remove_run_dir

#: devices whose property lists the harness needs
PROBED_DEVICES = ("intel-iommu", "arm-smmuv3", "edu", "vfio-pci", "pvpanic", "pvpanic-pci")


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
        )


def resolve_binary(arch: str, qemu: str | None = None) -> str:
    """Absolute path of the QEMU binary (``--qemu`` or the installed one for ``arch``).

    A binary the caller named that does not exist is a ConfigError (their mistake); the
    installed one missing is a QemuNotFoundError (a prerequisite: tests skip on it).
    """
    name = qemu or QEMU_BINARIES[arch]
    path = shutil.which(name)
    if path is None and qemu:
        raise ConfigError(f"QEMU binary {name!r} not found (named by --qemu or the matrix)")
    if path is None:
        raise QemuNotFoundError(f"QEMU binary {name!r} not found (scripts/setup.sh installs it)")
    return os.path.realpath(path)


def _cache_path(binary: str) -> Path:
    st = os.stat(binary)
    key = f"{binary.strip('/').replace('/', '_')}-{st.st_size}-{int(st.st_mtime)}"
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
        q = ver["qemu"]
        return QemuCapabilities(
            binary=binary,
            version=(q["major"], q["minor"], q["micro"]),
            package=str(ver.get("package", "")).strip(),
            devices=frozenset(types),
            properties=props,
            accelerators=frozenset(accels),
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
