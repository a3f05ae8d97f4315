"""Hot-plug pieces without a guest: the empty root port on the command line, the QMP calls
(against a recording stand-in for the QMP session), and query-pci's nested answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.errors import ConfigError
from harness.profiles import make_devices
from harness.qemu.argv import RunEndpoints, build_argv
from harness.qemu.description import HotplugPort, Machine
from harness.qemu.hotplug import device_add, device_del, pci_devices, wait_deleted
from harness.qemu.qmp import QmpEvent

pytestmark = pytest.mark.tier0

#: query-pci of a virt machine with edu hot-added behind root port hotport0 (bus 1),
#: trimmed to the fields read (QEMU 10.0.2)
QUERY_PCI = [
    {
        "bus": 0,
        "devices": [
            {"bus": 0, "slot": 0, "function": 0, "id": {"vendor": 6966, "device": 8},
             "qdev_id": ""},
            {"bus": 0, "slot": 1, "function": 0, "id": {"vendor": 6966, "device": 12},
             "qdev_id": "hotport0",
             "pci_bridge": {"bus": {"number": 1, "secondary": 1, "subordinate": 1},
                            "devices": [{"bus": 1, "slot": 0, "function": 0,
                                         "id": {"vendor": 4660, "device": 4584},
                                         "qdev_id": "hotedu"}]}},
        ],
    }
]  # fmt: skip


class RecordingQmp:
    """The parts of ``QmpSession`` the hot-plug calls use; records commands."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.answers = answers or {}
        self.waited: list[tuple[str, dict[str, Any], float, float]] = []

    def execute(self, command: str, args: dict[str, Any] | None = None) -> Any:
        self.commands.append((command, dict(args or {})))
        return self.answers.get(command, {})

    def wait_event(
        self, name: str, match: dict[str, Any], timeout: float, since: float, abort: Any
    ) -> QmpEvent:
        self.waited.append((name, match, timeout, since))
        return QmpEvent(name, {"device": match["device"]}, since + 6.5, {})


def test_hotplug_port_is_an_empty_root_port_on_the_command_line() -> None:
    devices = make_devices(["edu", "hotplug-port"])
    ports = [d for d in devices if isinstance(d, HotplugPort)]
    assert ports == [HotplugPort(id="hotport1", chassis=33)]
    machine = Machine(arch="arm64", kernel=Path("/k/Image"), initrd=Path("/k/i.cpio"),
                      devices=devices)  # fmt: skip
    run = RunEndpoints(Path("/r/qmp.sock"), Path("/a/console.log"), Path("/a/qemu.log"))
    argv = build_argv(machine, run, "tcg")
    assert "pcie-root-port,id=hotport1,chassis=33" in argv


def test_hotplug_port_validation() -> None:
    with pytest.raises(ConfigError, match=r"hotplug-port\.chassis=300"):
        HotplugPort(chassis=300).validate()
    with pytest.raises(ConfigError, match="known: edu, igb, hotplug-port"):
        make_devices(["hotport"])


def test_device_add_del_and_the_deleted_event() -> None:
    qmp = RecordingQmp()
    device_add(qmp, "edu", id="hotedu", bus="hotport0", dma_mask=0xFFFFFFFFFFFF)  # type: ignore[arg-type]
    since = device_del(qmp, "hotedu")  # type: ignore[arg-type]
    assert qmp.commands == [
        ("device_add", {"driver": "edu", "id": "hotedu", "bus": "hotport0",
                        "dma_mask": 0xFFFFFFFFFFFF}),
        ("device_del", {"id": "hotedu"}),
    ]  # fmt: skip
    took = wait_deleted(qmp, "hotedu", since, 90.0)  # type: ignore[arg-type]
    assert took == pytest.approx(6.5)
    assert qmp.waited == [("DEVICE_DELETED", {"device": "hotedu"}, 90.0, since)]


def test_pci_devices_walks_behind_root_ports() -> None:
    found = pci_devices(RecordingQmp({"query-pci": QUERY_PCI}))  # type: ignore[arg-type]
    assert [(d["bus"], d["slot"], d["qdev_id"]) for d in found] == [
        (0, 0, ""), (0, 1, "hotport0"), (1, 0, "hotedu"),
    ]  # fmt: skip
    assert (found[2]["vendor"], found[2]["device"]) == (0x1234, 0x11E8)
