"""Declarative, validated description of a guest machine.

A ``Machine`` says *what* to boot: architecture, accelerator, CPU, memory, kernel and
root filesystem, the vIOMMU with its options, and devices.  It is checked as a whole by
``Machine.validate()`` (and at construction) so an invalid combination is refused, with
the option named, before anything is launched.  ``harness.qemu.argv`` turns it into a
command line.
"""

from __future__ import annotations

import functools
import os
import re
import types
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from harness.errors import ConfigError

Arch = Literal["x86_64", "arm64"]
Accel = Literal["kvm", "tcg", "auto"]
OnOffAuto = Literal["on", "off", "auto"]

ARCHES: tuple[str, ...] = ("x86_64", "arm64")
ACCELS: tuple[str, ...] = ("kvm", "tcg", "auto")
_BDF = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def _check_id(owner: str, value: str) -> None:
    if not _ID.match(value):
        raise ConfigError(f"{owner}.id: {value!r} is not a valid QEMU id")


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return {f.name: get_type_hints(cls)[f.name] for f in fields(cls)}


def _hint_text(hint: Any) -> str:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_hint_text(a) for a in get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(hint))
    if origin is tuple:
        return "a list of " + re.sub(r"^an? ", "", _hint_text(get_args(hint)[0])) + "s"
    if hint is type(None):
        return "null"
    if hint is Path:
        return "a path"
    names = {bool: "a boolean", int: "an integer", str: "a string"}
    return names.get(hint) or str(getattr(hint, "__name__", hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type a field's annotation says (bools are not ints)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in get_args(hint))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in get_args(hint))
    if origin is tuple:
        item = get_args(hint)[0]
        return isinstance(value, tuple) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, str | os.PathLike)
    return isinstance(value, hint)


def _check_types(obj: Any, owner: str) -> None:
    """ConfigError naming the first field whose value has the wrong type."""
    cls: Any = type(obj)
    for name, hint in _hints(cls).items():
        value = getattr(obj, name)
        if not _fits(value, hint):
            raise ConfigError(f"{owner}{name}={value!r:.60}: expected {_hint_text(hint)}")


@dataclass(frozen=True)
class IntelIommu:
    """QEMU's emulated VT-d (``-device intel-iommu``); ``None`` keeps QEMU's default."""

    aw_bits: int | None = None
    scalable_mode: bool | None = None
    flts: bool | None = None
    pasid_mode: bool | None = None
    caching_mode: bool | None = None
    device_iotlb: bool | None = None
    intremap: OnOffAuto | None = None
    snoop_control: bool | None = None
    dma_drain: bool | None = None
    pt: bool | None = None
    fs1gp: bool | None = None
    #: QEMU >= 11 only: page requests (ECAP.PRS; the guest kernel then sets up its PRQ)
    svm: bool | None = None
    #: QEMU >= 11's property names (``scalable-mode``, ``fsts``); set by
    #: ``harness.qemu.probe.adapt_machine`` from what the QEMU in use has
    qemu11_names: bool = False

    kind = "vtd"

    #: field name -> QEMU property name
    PROPERTIES = {
        "aw_bits": "aw-bits",
        "scalable_mode": "x-scalable-mode",
        "flts": "x-flts",
        "pasid_mode": "x-pasid-mode",
        "caching_mode": "caching-mode",
        "device_iotlb": "device-iotlb",
        "intremap": "intremap",
        "snoop_control": "snoop-control",
        "dma_drain": "dma-drain",
        "pt": "pt",
        "fs1gp": "fs1gp",
        "svm": "svm",
    }
    #: the names QEMU 11 gave the same properties (QEMU 10.x: ``x-`` prefixed / ``x-flts``);
    #: ``x-pasid-mode=on`` (20-bit PASIDs, ECAP.PSS 19) became ``pasid-bits=20``
    PROPERTIES_QEMU11 = {"scalable_mode": "scalable-mode", "flts": "fsts",
                         "pasid_mode": "pasid-bits"}  # fmt: skip
    PASID_BITS = 20

    def properties(self) -> dict[str, Any]:
        """The QEMU properties this description sets, in a fixed order."""
        names = {**self.PROPERTIES, **(self.PROPERTIES_QEMU11 if self.qemu11_names else {})}
        found = {
            prop: getattr(self, name)
            for name, prop in names.items()
            if getattr(self, name) is not None
        }
        if "pasid-bits" in found:
            found["pasid-bits"] = self.PASID_BITS if found["pasid-bits"] else 0
        return found

    def validate(self) -> None:
        _check_types(self, "intel-iommu.")
        if self.aw_bits is not None and self.aw_bits not in (39, 48):
            raise ConfigError(f"intel-iommu aw-bits={self.aw_bits}: QEMU supports 39 or 48")
        if self.flts and not self.scalable_mode:
            raise ConfigError("intel-iommu x-flts=on needs x-scalable-mode=on")
        if self.pasid_mode and not self.scalable_mode:
            raise ConfigError("intel-iommu x-pasid-mode=on needs x-scalable-mode=on")
        if self.intremap is not None and self.intremap not in ("on", "off", "auto"):
            raise ConfigError(f"intel-iommu intremap={self.intremap!r}: expected on/off/auto")


@dataclass(frozen=True)
class SmmuV3:
    """QEMU's emulated SMMUv3: the machine's (``virt,iommu=smmuv3``) or ``-device arm-smmuv3``."""

    stage: Literal["1", "2", "nested"] | None = None
    device: bool = False
    primary_bus: str = "pcie.0"
    accel: bool | None = None
    ats: bool | None = None
    ril: bool | None = None
    pasid: bool | None = None
    oas: int | None = None

    kind = "smmuv3"

    #: properties only the user-creatable device has (newer QEMU)
    DEVICE_ONLY = {"accel": "accel", "ats": "ats", "ril": "ril", "pasid": "pasid", "oas": "oas"}

    def properties(self) -> dict[str, Any]:
        """The QEMU ``arm-smmuv3`` properties this description sets."""
        props: dict[str, Any] = {}
        if self.device:
            props["primary-bus"] = self.primary_bus
        if self.stage is not None:
            props["stage"] = self.stage
        for name, prop in self.DEVICE_ONLY.items():
            if getattr(self, name) is not None:
                props[prop] = getattr(self, name)
        return props

    def validate(self) -> None:
        _check_types(self, "arm-smmuv3.")
        if self.stage is not None and self.stage not in ("1", "2", "nested"):
            raise ConfigError(f"arm-smmuv3 stage={self.stage!r}: expected 1, 2 or nested")
        if not self.device:
            for name in self.DEVICE_ONLY:
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"arm-smmuv3 {name}: only the user-creatable -device arm-smmuv3 has it"
                        " (set device=True)"
                    )
        if self.accel and not self.device:
            raise ConfigError("arm-smmuv3 accel=on needs device=True")
        if self.oas is not None and self.oas not in (32, 36, 40, 42, 44, 48, 52):
            raise ConfigError(f"arm-smmuv3 oas={self.oas}: not an SMMUv3 output size")


@dataclass(frozen=True)
class Edu:
    """QEMU's educational PCI device: a simple DMA engine that the guest binds to vfio-pci."""

    id: str = "edu0"
    dma_mask: int | None = None
    addr: str | None = None

    def validate(self) -> None:
        _check_types(self, "edu.")
        _check_id("edu", self.id)
        if self.dma_mask is not None and not 0 < self.dma_mask < 1 << 64:
            raise ConfigError(f"edu.dma_mask={self.dma_mask:#x}: must be a non-zero 64-bit mask")


@dataclass(frozen=True)
class Igb:
    """QEMU's emulated Intel 82576 (``igb``, 8086:10C9) on a PCIe root port of its own.

    The kernel's VFIO selftests drive it with their own ``igb`` driver (real DMA through
    the vIOMMU); its SR-IOV VFs (``igbvf``) appear on the root port's bus.  No netdev is
    attached: the selftest driver loops packets back inside the device.
    """

    id: str = "igb0"
    addr: str | None = None
    root_port: bool = True
    chassis: int = 16

    VENDOR_ID = 0x8086
    DEVICE_ID = 0x10C9

    @property
    def port_id(self) -> str:
        """The QEMU id of the root port the device sits on."""
        return f"rp-{self.id}"

    def qemu_devices(self) -> list[tuple[str, dict[str, Any]]]:
        """``(driver, properties)`` of each ``-device`` this description adds, in order."""
        devices: list[tuple[str, dict[str, Any]]] = []
        props: dict[str, Any] = {"id": self.id}
        if self.root_port:
            port: dict[str, Any] = {"id": self.port_id, "chassis": self.chassis}
            if self.addr is not None:
                port["addr"] = self.addr
            devices.append(("pcie-root-port", port))
            props["bus"] = self.port_id
        elif self.addr is not None:
            props["addr"] = self.addr
        devices.append(("igb", props))
        return devices

    def validate(self) -> None:
        _check_types(self, "igb.")
        _check_id("igb", self.id)
        if not 0 <= self.chassis <= 255:
            raise ConfigError(f"igb.chassis={self.chassis}: expected 0..255")


@dataclass(frozen=True)
class HotplugPort:
    """An empty PCIe root port: a slot for ``device_add`` and ``device_del`` (hot-plug).

    The guest sees hot-plug events through pciehp (virt) or ACPI PCI hot-plug (q35, which
    QEMU uses for root ports by default); the guest kernels' config has both.
    """

    id: str = "hotport0"
    chassis: int = 32

    def qemu_devices(self) -> list[tuple[str, dict[str, Any]]]:
        """The root port, nothing behind it."""
        return [("pcie-root-port", {"id": self.id, "chassis": self.chassis})]

    def validate(self) -> None:
        _check_types(self, "hotplug-port.")
        _check_id("hotplug-port", self.id)
        if not 0 <= self.chassis <= 255:
            raise ConfigError(f"hotplug-port.chassis={self.chassis}: expected 0..255")


@dataclass(frozen=True)
class VfioPci:
    """A host PCI device passed through with vfio-pci (tier 3)."""

    host: str = ""
    backend: Literal["container", "iommufd"] = "iommufd"
    id: str = "hostdev0"

    def validate(self) -> None:
        _check_types(self, "vfio-pci.")
        _check_id("vfio-pci", self.id)
        if not self.host:
            raise ConfigError("vfio-pci: host BDF is required (e.g. host='0000:01:00.0')")
        if not _BDF.match(self.host):
            raise ConfigError(f"vfio-pci host={self.host!r}: not a PCI address DDDD:BB:DD.F")
        if self.backend not in ("container", "iommufd"):
            raise ConfigError(f"vfio-pci backend={self.backend!r}: expected container or iommufd")


@dataclass(frozen=True)
class UserNic:
    """User-mode networking with SSH forwarded from 127.0.0.1 only."""

    model: str | None = None  # None: virtio-net-pci on x86_64, virtio-mmio on arm64
    id: str = "net0"

    def validate(self) -> None:
        _check_types(self, "nic.")
        _check_id("nic", self.id)


@dataclass(frozen=True)
class Pvpanic:
    """pvpanic: a guest panic becomes a ``GUEST_PANICKED`` QMP event."""

    def validate(self) -> None:
        _check_types(self, "pvpanic.")


Device = Edu | Igb | HotplugPort | VfioPci | UserNic | Pvpanic
Viommu = IntelIommu | SmmuV3


@dataclass(frozen=True)
class Machine:
    """Everything that determines the QEMU command line of a guest."""

    arch: Arch
    kernel: Path
    initrd: Path
    accel: Accel = "auto"
    cpu: str | None = None
    memory_mb: int = 2048
    smp: int = 2
    append: str = ""
    console: str | None = None
    firmware: Literal["direct", "uefi"] = "direct"
    uefi_code: Path | None = None
    viommu: Viommu | None = None
    devices: tuple[Device, ...] = field(default_factory=tuple)
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse invalid combinations, naming the option."""
        if self.arch not in ARCHES:
            raise ConfigError(f"arch={self.arch!r}: expected one of {', '.join(ARCHES)}")
        if self.accel not in ACCELS:
            raise ConfigError(f"accel={self.accel!r}: expected one of {', '.join(ACCELS)}")
        _check_types(self, "")
        if not 64 <= self.memory_mb <= 64 * 1024:
            raise ConfigError(f"memory_mb={self.memory_mb}: expected 64..65536")
        if not 1 <= self.smp <= 64:
            raise ConfigError(f"smp={self.smp}: expected 1..64")
        if self.firmware not in ("direct", "uefi"):
            raise ConfigError(f"firmware={self.firmware!r}: expected direct or uefi")
        if self.firmware == "uefi":
            if self.arch != "arm64":
                raise ConfigError("firmware=uefi is supported for arm64 guests only")
            if self.uefi_code is None:
                raise ConfigError("firmware=uefi needs uefi_code (QEMU_EFI.fd)")
        if isinstance(self.viommu, SmmuV3) and self.arch != "arm64":
            raise ConfigError("viommu=smmuv3 needs arch=arm64 (SMMUv3 is an Arm IOMMU)")
        if isinstance(self.viommu, IntelIommu) and self.arch != "x86_64":
            raise ConfigError("viommu=vtd needs arch=x86_64 (intel-iommu is a q35 device)")
        if self.viommu is not None:
            self.viommu.validate()
        ids: set[str] = set()
        for dev in self.devices:
            dev.validate()
            dev_id = getattr(dev, "id", None)
            if dev_id is not None:
                if dev_id in ids:
                    raise ConfigError(f"device id {dev_id!r} is used twice")
                ids.add(dev_id)
        if sum(isinstance(d, UserNic) for d in self.devices) > 1:
            raise ConfigError("only one user-mode NIC (the SSH path) is supported")
        if sum(isinstance(d, Pvpanic) for d in self.devices) > 1:
            raise ConfigError("pvpanic given twice")

    def with_(self, **changes: Any) -> Machine:
        """A copy with ``changes`` applied (and validated)."""
        return replace(self, **changes)

    def describe(self) -> dict[str, Any]:
        """A JSON-able form, for artifacts and repro bundles."""
        described: dict[str, Any] = _to_jsonable(self)
        return described


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple | list):
        return [_to_jsonable(x) for x in obj]
    if hasattr(obj, "__dataclass_fields__"):
        out = {"type": type(obj).__name__}
        for f in fields(obj):
            out[f.name] = _to_jsonable(getattr(obj, f.name))
        return out
    return obj


_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (IntelIommu, SmmuV3, Edu, Igb, VfioPci, UserNic, Pvpanic)
}


def machine_from_dict(data: dict[str, Any]) -> Machine:
    """Rebuild a ``Machine`` from ``Machine.describe()`` output; ConfigError names bad keys."""

    def build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "type":
                continue
            if key not in known:
                raise ConfigError(f"{where}.{key}: unknown field of {cls.__name__}")
            kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def nested(raw: Any, where: str) -> Any:
        if raw is None:
            return None
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("type"), str)
            or (raw["type"] not in _TYPES)
        ):
            raise ConfigError(f"{where}: unknown or missing 'type' ({raw!r:.60})")
        return build(_TYPES[raw["type"]], raw, where)

    if not isinstance(data, dict):
        raise ConfigError("machine: expected an object")
    raw = dict(data)
    raw.pop("type", None)
    for key in ("kernel", "initrd", "uefi_code"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str):
                raise ConfigError(f"machine.{key}={raw[key]!r:.60}: expected a path string")
            raw[key] = Path(raw[key])
    raw["viommu"] = nested(raw.get("viommu"), "machine.viommu")
    for key in ("devices", "extra_args"):
        if not isinstance(raw.get(key) or [], list | tuple):
            raise ConfigError(f"machine.{key}={raw[key]!r:.60}: expected a list")
    raw["devices"] = tuple(
        nested(d, f"machine.devices[{i}]") for i, d in enumerate(raw.get("devices") or [])
    )
    raw["extra_args"] = tuple(raw.get("extra_args") or ())
    result: Machine = build(Machine, raw, "machine")
    return result
