"""Tier 3 without a VM: passthrough command lines, host checks on fake sysfs trees, the IORT
RMR upgrade, QEMU 11 trace lines, SSH forwarding, the payload disk and the CLI."""

from __future__ import annotations

import argparse
import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.commands import tier3 as command
from harness.errors import ConfigError, EncodeError
from harness.firmware.iort import build_iort, parse_iort
from harness.qemu.argv import RunEndpoints, build_argv
from harness.qemu.trace import TraceRecord, TraceWindow
from harness.qemu.trace import parse_trace_line as parse_line
from harness.scenarios.base import Verdict, get, load_all
from harness.smmuv3 import predict_idrs
from harness.tier3 import hostcheck, rmr
from harness.tier3.forward import ChannelForward, LogMirror, unix_bridge_command
from harness.tier3.l1 import (
    Payload,
    find_mke2fs,
    l1_machine,
    l2_iort_key,
    payload_args,
    payload_disk,
)
from harness.tier3.l2 import startup_trace_args
from harness.tier3.passthrough import (
    AccelSmmuTopology,
    VtdFirstStage,
    full_bdf,
    l2_machine,
    passthrough_machine,
    topology_for,
    vtd_property_names,
)
from harness.uapi import iommufd as uapi
from harness.vtd.registers import Ecap

pytestmark = pytest.mark.tier0

BDF = "0000:00:01.0"

#: QEMU 11.1.3's IORT for L2 (virt + pxb-pcie + arm-smmuv3,accel=on + one vfio-pci device),
#: as L2 read it from /sys/firmware/acpi/tables/IORT: ITS group, SMMUv3, root complex, RMR.
L2_IORT = bytes.fromhex(
    "494f525444010000051b424f434853204258504320202020010000004258504301000000040000003000000000000000"
    "001800010000000000000000000000000100000000000000045800040100000001000000440000000000000c00000000"
    "010000000000000000000000000000000000000090000000910000009300000092000000000000000000000000000000"
    "ffff00000000000030000000000000000260000302000000030000002400000001000000000000030000000000000000"
    "4000000000010000ff01000000010000480000000000000000000000ff00000000000000300000000000000000030000"
    "fffc00000003000030000000000000000644000303000000010000001c00000000000000010000003000000000010000"
    "ff0100000001000048000000010000000000000800000000000010000000000000000000"
)


class _Image:
    """What ``passthrough_machine`` needs of a ``GuestImage``."""

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self.kernel = Path(f"/img/{arch}/kernel")
        self.initramfs = Path(f"/img/{arch}/initramfs.cpio")
        self.console = "ttyAMA0" if arch == "arm64" else "ttyS0"
        self.cmdline = (f"console={self.console}", "panic=-1")
        self.uefi_firmware = Path("/fw/QEMU_EFI.fd") if arch == "arm64" else None


def _argv(machine: Any, accel: str = "kvm") -> list[str]:
    run = RunEndpoints(Path("/r/qmp.sock"), Path("/r/console.log"), Path("/r/qemu.log"))
    return build_argv(machine, run, accel)


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


# -- passthrough topologies and machines ----------------------------------------------------


def test_accel_smmu_topology_orders_bus_before_smmu_and_devices() -> None:
    args = AccelSmmuTopology(("01:00.0", "0000:02:00.0")).args()
    assert args[:2] == ["-object", "iommufd,id=iommufd0"]
    devices = _devices(args)
    assert devices == [
        "pxb-pcie,id=pcie.1,bus_nr=1,bus=pcie.0",
        "arm-smmuv3,primary-bus=pcie.1,id=smmuv3.1,accel=on",
        "pcie-root-port,id=pcie.1.port0,bus=pcie.1,chassis=16",
        "vfio-pci,host=0000:01:00.0,bus=pcie.1.port0,iommufd=iommufd0,id=hostdev0",
        "pcie-root-port,id=pcie.1.port1,bus=pcie.1,chassis=17",
        "vfio-pci,host=0000:02:00.0,bus=pcie.1.port1,iommufd=iommufd0,id=hostdev1",
    ]


def test_accel_smmu_topology_options() -> None:
    args = AccelSmmuTopology((BDF,), options={"ril": False, "oas": 48}).args()
    assert "arm-smmuv3,primary-bus=pcie.1,id=smmuv3.1,accel=on,ril=off,oas=48" in args


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hosts": ()}, "at least one cold-plugged vfio-pci"),
        ({"hosts": ("nonsense",)}, "not a PCI address"),
        ({"hosts": (BDF,), "options": {"stage": "2"}}, "stage 1 only"),
        ({"hosts": (BDF,), "options": {"oas": "48,x=1"}}, "not a plain QEMU property value"),
        ({"hosts": (BDF,), "bus_nr": 0}, "bus_nr=0"),
    ],
)
def test_accel_smmu_topology_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AccelSmmuTopology(**kwargs).args()


def test_vtd_first_stage_args_kvm_and_tcg() -> None:
    topology = VtdFirstStage(("03:00.0",))
    kvm = topology.args("kvm")
    assert kvm[:2] == ["-machine", "kernel-irqchip=split"]
    assert _devices(kvm) == [
        "intel-iommu,scalable-mode=on,fsts=on,caching-mode=on,aw-bits=48",
        "vfio-pci,host=0000:03:00.0,iommufd=iommufd0,id=hostdev0",
    ]
    assert "kernel-irqchip=split" not in topology.args("tcg")
    old = VtdFirstStage((BDF,), names=("x-scalable-mode", "x-flts"), first_stage=False)
    assert "intel-iommu,x-scalable-mode=on,x-flts=off,caching-mode=on,aw-bits=48" in old.args()


def test_vtd_property_names_follow_the_qemu_version() -> None:
    assert vtd_property_names({"fsts", "scalable-mode"}) == ("scalable-mode", "fsts")
    assert vtd_property_names({"x-flts", "x-scalable-mode"}) == ("x-scalable-mode", "x-flts")
    with pytest.raises(ConfigError, match="neither fsts"):
        vtd_property_names({"caching-mode"})


def test_topology_for_arch() -> None:
    assert isinstance(topology_for("arm64", (BDF,)), AccelSmmuTopology)
    vtd = topology_for("x86_64", (BDF,), {"x-flts"})
    assert isinstance(vtd, VtdFirstStage) and vtd.names == ("x-scalable-mode", "x-flts")
    with pytest.raises(ConfigError, match="riscv"):
        topology_for("riscv", (BDF,))


def test_full_bdf() -> None:
    assert full_bdf("01:00.0") == "0000:01:00.0"
    assert full_bdf("0000:AB:1f.7") == "0000:ab:1f.7"
    with pytest.raises(ConfigError, match="not a PCI address"):
        full_bdf("01:00")


def test_passthrough_machine_arm64_command_line() -> None:
    machine = passthrough_machine(_Image("arm64"), AccelSmmuTopology((BDF,)))
    argv = _argv(machine)
    assert machine.firmware == "uefi" and machine.viommu is None
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "iommu=smmuv3" not in argv[argv.index("-machine") + 1]
    devices = _devices(argv)
    smmu = devices.index("arm-smmuv3,primary-bus=pcie.1,id=smmuv3.1,accel=on")
    assert devices.index("pxb-pcie,id=pcie.1,bus_nr=1,bus=pcie.0") < smmu
    assert "virtio-net-device,netdev=net0" in devices  # the NIC stays off PCI
    assert "acpi=force" in argv[argv.index("-append") + 1]


def test_passthrough_machine_x86_command_line() -> None:
    machine = passthrough_machine(_Image("x86_64"), VtdFirstStage((BDF,)))
    argv = _argv(machine)
    assert argv.count("-machine") == 2 and "kernel-irqchip=split" in argv
    assert f"vfio-pci,host={BDF},iommufd=iommufd0,id=hostdev0" in _devices(argv)


def test_passthrough_machine_refusals() -> None:
    with pytest.raises(ConfigError, match="requires KVM"):
        passthrough_machine(_Image("arm64"), AccelSmmuTopology((BDF,)), accel="tcg")
    with pytest.raises(ConfigError, match="needs an x86_64 guest image"):
        passthrough_machine(_Image("arm64"), VtdFirstStage((BDF,)))


def test_l2_machine_points_into_the_payload_disk() -> None:
    machine = l2_machine("/run/payload", AccelSmmuTopology((BDF,)), accel="kvm")
    argv = _argv(machine)
    assert argv[argv.index("-kernel") + 1] == "/run/payload/Image"
    assert argv[argv.index("-initrd") + 1] == "/run/payload/initramfs.cpio"
    assert argv[argv.index("-bios") + 1] == "/run/payload/QEMU_EFI.fd"
    assert "pvpanic-pci" not in argv
    traced = argv + startup_trace_args(["iommufd_backend_*", "smmuv3_accel_*"])
    assert traced[-4:] == ["-trace", "enable=iommufd_backend_*", "-trace", "enable=smmuv3_accel_*"]


# -- host checks on fake trees --------------------------------------------------------------


def _vtd_info(ecap: Ecap, cap: int = 0) -> dict[str, Any]:
    data = struct.pack("<IIQQ", 0, 0, cap, ecap.encode())
    return {"data_type": uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD, "data": data, "nest_parent": "OK"}


def _smmu_info(options: dict[str, Any], nest_parent: str = "OK") -> dict[str, Any]:
    idrs = predict_idrs(options)
    data = struct.pack("<II6III", 0, 0, *(idrs[f"IDR{i}"] for i in range(6)), 0, 0)
    return {
        "data_type": uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3,
        "data": data,
        "nest_parent": nest_parent,
    }


def _tree(
    tmp_path: Path,
    *,
    driver: str | None = "vfio-pci",
    group: bool = True,
    cdev: bool = True,
    others: tuple[tuple[str, str | None], ...] = (),
    kvm: bool = True,
    iommufd: bool = True,
    vfio_loaded: bool = True,
) -> tuple[Path, Path]:
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    pci = sys_root / "bus" / "pci"
    for bdf, drv in ((BDF, driver), *others):
        base = pci / "devices" / bdf
        base.mkdir(parents=True)
        (base / "vendor").write_text("0x1234\n")
        (base / "device").write_text("0x11e8\n")
        if drv is not None:
            (pci / "drivers" / drv).mkdir(parents=True, exist_ok=True)
            (base / "driver").symlink_to(pci / "drivers" / drv)
        if group:
            members = sys_root / "kernel" / "iommu_groups" / "7" / "devices"
            members.mkdir(parents=True, exist_ok=True)
            (members / bdf).symlink_to(base)
            (base / "iommu_group").symlink_to(members.parent)
    if cdev:
        (pci / "devices" / BDF / "vfio-dev" / "vfio3").mkdir(parents=True)
    if vfio_loaded:
        (pci / "drivers" / "vfio-pci").mkdir(parents=True, exist_ok=True)
    dev_root.mkdir()
    if kvm:
        (dev_root / "kvm").touch()
    if iommufd:
        (dev_root / "iommu").touch()
    return sys_root, dev_root


NEST_ECAP = Ecap(smts=True, nest=True, ssts=True, fsts=True)


def test_check_host_ready(tmp_path: Path) -> None:
    sys_root, dev_root = _tree(tmp_path)
    seen: list[str] = []

    def reader(cdev: str) -> dict[str, Any]:
        seen.append(cdev)
        return _vtd_info(NEST_ECAP)

    report = hostcheck.check_host("00:01.0", sys_root=sys_root, dev_root=dev_root, hw_info=reader)
    assert report.skip_reason is None
    assert seen == [str(dev_root / "vfio" / "devices" / "vfio3")]
    assert report.iommu is not None and report.iommu.kind == "vtd" and report.iommu.nesting
    assert report.device is not None and report.device.iommu_group == "7"
    assert all(row["ok"] for row in report.rows)


@pytest.mark.parametrize(
    ("tree", "reason"),
    [
        ({"driver": "e1000e"}, "bound to e1000e, not vfio-pci (bind it: echo vfio-pci"),
        ({"driver": None, "vfio_loaded": False}, "bound to no driver, not vfio-pci (and vfio-pci"),
        ({"group": False}, "has no IOMMU group"),
        ({"cdev": False}, "no vfio cdev"),
        ({"others": (("0000:00:01.1", "snd_hda_intel"),)}, "also holds 0000:00:01.1"),
        ({"kvm": False}, "no KVM on this host"),
        ({"iommufd": False}, "/dev/iommu is missing"),
    ],
)
def test_check_host_names_what_is_missing(
    tmp_path: Path, tree: dict[str, Any], reason: str
) -> None:
    sys_root, dev_root = _tree(tmp_path, **tree)
    report = hostcheck.check_host(
        BDF, sys_root=sys_root, dev_root=dev_root, hw_info=lambda cdev: _vtd_info(NEST_ECAP)
    )
    assert report.skip_reason is not None and reason in report.skip_reason


def test_check_host_without_a_device_or_with_a_missing_one(tmp_path: Path) -> None:
    assert hostcheck.check_host(None).skip_reason == hostcheck.NO_HOST_DEVICE
    sys_root, dev_root = _tree(tmp_path)
    missing = hostcheck.check_host("0000:09:00.0", sys_root=sys_root, dev_root=dev_root)
    assert missing.skip_reason == "host device 0000:09:00.0 does not exist"
    assert "not a PCI address" in str(hostcheck.check_host("zz", sys_root=sys_root).skip_reason)


def test_check_host_vtd_without_nesting(tmp_path: Path) -> None:
    sys_root, dev_root = _tree(tmp_path)
    ecap = Ecap(smts=True, nest=False, ssts=False, fsts=True)  # QEMU's emulated VT-d, x-flts
    report = hostcheck.check_host(
        BDF, sys_root=sys_root, dev_root=dev_root, hw_info=lambda cdev: _vtd_info(ecap)
    )
    assert report.skip_reason == (
        "no nesting-capable host IOMMU: VT-d ecap SMTS=1 NEST=0 SSTS=0 (nesting needs all three)"
    )


def test_evaluate_smmuv3() -> None:
    both = _smmu_info({"stage": "nested"})
    canwbs = parse_iort(build_iort(rc_memory_flags=0x03 | 0x04))
    assert canwbs.canwbs
    ok = hostcheck.evaluate_hw_info(
        both["data_type"], both["data"], iort=build_iort(rc_memory_flags=0x07)
    )
    assert ok.nesting and ok.kind == "smmuv3" and "IORT CANWBS=1" in ok.reason
    no_canwbs = hostcheck.evaluate_hw_info(both["data_type"], both["data"], iort=build_iort())
    assert not no_canwbs.nesting and "IDR3.FWB=0 and IORT CANWBS=0" in no_canwbs.reason
    one = _smmu_info({"stage": "1"})
    single = hostcheck.evaluate_hw_info(
        one["data_type"], one["data"], iort=build_iort(rc_memory_flags=0x07)
    )
    assert not single.nesting and "IDR0.S2P=0" in single.reason


def test_evaluate_kernel_refusal_overrides_registers() -> None:
    info = _vtd_info(NEST_ECAP)
    verdict = hostcheck.evaluate_hw_info(info["data_type"], info["data"], nest_parent="EOPNOTSUPP")
    assert not verdict.nesting and "refused a NEST_PARENT HWPT (EOPNOTSUPP)" in verdict.reason


def test_evaluate_other_iommus() -> None:
    amd = hostcheck.evaluate_hw_info(uapi.IOMMU_HW_INFO_TYPE_AMD, b"")
    assert not amd.nesting and "AMD" in amd.reason
    broken = hostcheck.evaluate_hw_info(uapi.IOMMU_HW_INFO_TYPE_ARM_SMMUV3, b"\x01" * 8)
    assert not broken.nesting and "undecodable" in broken.reason


# -- the IORT RMR upgrade -------------------------------------------------------------------


def test_relax_rmrs_sets_remap_permitted_only() -> None:
    assert rmr.rmr_flags(L2_IORT) == {0x100: 0}
    patch = rmr.relax_rmrs(L2_IORT)
    assert rmr.rmr_flags(patch.table) == {0x100: rmr.RMR_REMAP_PERMITTED}
    new = parse_iort(patch.table)
    assert new.header.oem_revision == parse_iort(L2_IORT).header.oem_revision + 1
    changed = [i for i, (a, b) in enumerate(zip(L2_IORT, patch.table, strict=True)) if a != b]
    assert set(changed) <= {9, 24, 0x100 + rmr.RMR_FLAGS}
    assert sum(patch.table) % 256 == 0
    assert patch.describe()["rmr_nodes"] == ["0x100"]


def test_relax_rmrs_refuses_a_table_without_rmr() -> None:
    with pytest.raises(EncodeError, match="no RMR node"):
        rmr.relax_rmrs(build_iort())


def test_relax_rmrs_refuses_the_last_oem_revision() -> None:
    from harness.firmware.acpi import with_checksum, with_oem_revision

    table = with_checksum(with_oem_revision(L2_IORT, 0xFFFF_FFFF))
    with pytest.raises(EncodeError, match="cannot be newer"):
        rmr.relax_rmrs(table)


# -- traces in QEMU 11's log format ---------------------------------------------------------


def test_parse_line_both_formats() -> None:
    new = parse_line(
        "1970-01-01T00:00:16.821866Z iommufd_backend_alloc_viommu  iommufd=23 dev_id=1 type=1"
        " hwpt_id=3 data_ptr=0x0 data_len=0x0 viommu_id=4 (0)"
    )
    assert isinstance(new, TraceRecord)
    assert new.name == "iommufd_backend_alloc_viommu" and new.int_field("viommu_id") == 4
    assert new.timestamp == pytest.approx(16.821866)
    old = parse_line("1234@1700000000.000001:smmuv3_record_event F_TRANSLATION sid=0x8")
    assert old is not None and old.name == "smmuv3_record_event" and old.int_field("sid") == 8
    assert parse_line("1970-01-01T00:00:16.8Z qemu-system-aarch64: -device x: warning") is None
    assert parse_line("plain text") is None


def test_log_window(tmp_path: Path) -> None:
    log = tmp_path / "qemu.log"
    log.write_text("1970-01-01T00:00:01.000000Z smmuv3_cmdq_opcode <--- SMMU_CMD_SYNC\n")
    window = TraceWindow(log)
    with log.open("a") as f:
        f.write("1970-01-01T00:00:02.000000Z smmuv3_cmdq_cfgi_cd sid=0x200\n")
    assert [r.name for r in window.records()] == ["smmuv3_cmdq_cfgi_cd"]
    assert len(TraceWindow(log, start=0).records("smmuv3_*")) == 2
    assert TraceWindow(tmp_path / "missing.log").records() == []


# -- forwarding through channels --------------------------------------------------------------


class _FakeChannel:
    """A socket standing in for a paramiko channel (the peer end echoes, upper-cased)."""

    def __init__(self) -> None:
        self.sock, peer = socket.socketpair()
        self.closed = False
        threading.Thread(target=self._echo, args=(peer,), daemon=True).start()

    @staticmethod
    def _echo(peer: socket.socket) -> None:
        with peer:
            while data := peer.recv(4096):
                peer.sendall(data.upper())

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def _round_trip(sock: socket.socket) -> bytes:
    sock.sendall(b"hello l2")
    sock.shutdown(socket.SHUT_WR)
    out = b""
    while data := sock.recv(4096):
        out += data
    return out


def test_channel_forward_tcp_and_unix(tmp_path: Path) -> None:
    opened: list[_FakeChannel] = []

    def opener() -> Any:
        opened.append(_FakeChannel())
        return opened[-1]

    tcp = ChannelForward(opener, name="tcp")
    try:
        with socket.create_connection(("127.0.0.1", tcp.port), timeout=5) as conn:
            assert _round_trip(conn) == b"HELLO L2"
    finally:
        tcp.close()
    path = tmp_path / "qmp.sock"
    unix = ChannelForward(opener, unix_path=path, name="unix")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(str(path))
            assert _round_trip(conn) == b"HELLO L2"
    finally:
        unix.close()
    assert not path.exists() and len(opened) == 2 and all(c.closed for c in opened)


def test_channel_forward_reports_a_failed_channel() -> None:
    def opener() -> Any:
        raise OSError("administratively prohibited")

    forward = ChannelForward(opener, name="ssh")
    try:
        with socket.create_connection(("127.0.0.1", forward.port), timeout=5) as conn:
            assert conn.recv(10) == b""
    finally:
        forward.close()
    assert forward.errors and "administratively prohibited" in forward.errors[0]


def test_unix_bridge_command_is_one_quoted_python_call() -> None:
    command_line = unix_bridge_command("/run/tier3/l2/qmp.sock", wait=7)
    assert command_line.startswith("python3 -c ")
    assert command_line.endswith(" /run/tier3/l2/qmp.sock 7")


class _TailChannel:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.command = ""

    def exec_command(self, command: str) -> None:
        self.command = command

    def recv(self, n: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def close(self) -> None:
        pass


class _Client:
    def __init__(self, chan: _TailChannel) -> None:
        self.chan = chan

    def get_transport(self) -> Any:
        client = self

        class _Transport:
            def is_active(self) -> bool:
                return True

            def open_session(self, timeout: float) -> Any:
                return client.chan

        return _Transport()


def test_log_mirror_copies_and_catches_up(tmp_path: Path) -> None:
    chan = _TailChannel([b"VIOMMU-", b"HARNESS-READY\n"])
    mirror = LogMirror(_Client(chan), "/run/l2/console.log", tmp_path / "console.log")  # type: ignore[arg-type]
    assert mirror.catch_up(21, timeout=5)
    mirror.close()
    assert (tmp_path / "console.log").read_bytes() == b"VIOMMU-HARNESS-READY\n"
    assert "tail -c +1 -F /run/l2/console.log" in chan.command
    assert not mirror.catch_up(100, timeout=0.2)


# -- L1: payload disk and machine -------------------------------------------------------------


@pytest.mark.skipif(find_mke2fs() is None, reason="mke2fs (e2fsprogs) not installed")
def test_payload_disk_is_built_once_per_content(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for name in ("Image", "initramfs.cpio", "QEMU_EFI.fd"):
        (files / name).write_bytes(name.encode() * 100)
    payload = Payload(files / "Image", files / "initramfs.cpio", files / "QEMU_EFI.fd")
    disk = payload_disk(payload, tmp_path / "cache")
    assert disk.exists() and disk.read_bytes()[0x438:0x43A] == b"\x53\xef"  # ext4 magic
    mtime = disk.stat().st_mtime_ns
    assert payload_disk(payload, tmp_path / "cache") == disk and disk.stat().st_mtime_ns == mtime
    (files / "Image").write_bytes(b"another kernel")
    assert payload_disk(payload, tmp_path / "cache") != disk


def test_payload_disk_reports_mke2fs_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.errors import HarnessError

    files = tmp_path / "files"
    files.mkdir()
    for name in ("Image", "initramfs.cpio"):
        (files / name).write_bytes(b"x")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mke2fs").write_text("#!/bin/sh\necho 'no space' >&2\nexit 3\n")
    (fake / "mke2fs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    with pytest.raises(HarnessError, match="mke2fs: status 3: no space"):
        payload_disk(Payload(files / "Image", files / "initramfs.cpio", None), tmp_path / "c")


def test_l1_machine_adds_el2_payload_and_memory() -> None:
    base = passthrough_machine(_Image("arm64"), AccelSmmuTopology((BDF,))).with_(extra_args=())
    machine = l1_machine(base, disk=Path("/cache/payload.img"), el2=True)
    assert machine.extra_args[:2] == ("-machine", "virtualization=on")
    assert machine.extra_args[2:] == payload_args(Path("/cache/payload.img"))
    assert "readonly=on" in machine.extra_args[3] and machine.memory_mb >= 3072
    assert l1_machine(base, disk=None, el2=False).extra_args == ()


def test_l2_iort_key_ignores_boot_files_but_not_topology() -> None:
    one = l2_machine("/a", AccelSmmuTopology((BDF,)), accel="kvm")
    other_files = l2_machine("/b", AccelSmmuTopology((BDF,)), accel="kvm")
    other_bus = l2_machine("/a", AccelSmmuTopology((BDF,), bus_nr=2), accel="kvm")
    assert l2_iort_key(one, "QEMU 11.1.3") == l2_iort_key(other_files, "QEMU 11.1.3")
    assert l2_iort_key(one, "QEMU 11.1.3") != l2_iort_key(other_bus, "QEMU 11.1.3")
    assert l2_iort_key(one, "QEMU 11.1.3") != l2_iort_key(one, "QEMU 11.2.0")


# -- scenarios and CLI ------------------------------------------------------------------------


def test_tier3_scenarios_are_registered() -> None:
    registry = load_all()
    assert registry["tier3-l2-smmuv3"].arches == ("arm64",)
    assert registry["tier3-l2-vtd"].arches == ("x86_64",)
    assert set(registry["tier3-passthrough"].arches) == {"x86_64", "arm64"}
    assert all(
        registry[n].tier == 3 for n in ("tier3-l2-smmuv3", "tier3-l2-vtd", "tier3-passthrough")
    )
    spec = get("tier3-l2-smmuv3").guest("arm64")
    assert spec.firmware == "uefi" and spec.viommu_options == {"stage": "nested"}


def _rec(name: str, message: str) -> TraceRecord:
    record = parse_line(f"1970-01-01T00:00:01.000000Z {name} {message}")
    assert record is not None
    return record


def test_forwarding_check_counts_tlbis_and_vdevice_cfgi_cds() -> None:
    from harness.scenarios.tier3 import _forwarding_check

    records = [
        _rec("smmuv3_cmdq_opcode", "<--- SMMU_CMD_TLBI_NH_VA"),
        _rec("smmuv3_cmdq_opcode", "<--- SMMU_CMD_SYNC"),
        _rec("smmuv3_cmdq_cfgi_cd", "sid=0x200"),
        _rec("smmuv3_cmdq_cfgi_cd", "sid=0x100"),  # the root port: stays in QEMU
        _rec("iommufd_backend_invalidate_cache", "iommufd=3 id=4 data_type=1 entry_num=1 (0)"),
    ]
    verdict = Verdict("t")
    missing = _forwarding_check(verdict, records, [0x200])
    assert not missing.ok and (missing.expected, missing.got) == (2, 1)
    records.append(_rec("iommufd_backend_invalidate_cache", "iommufd=3 id=4 entry_num=1 (0)"))
    assert _forwarding_check(verdict, records, [0x200]).ok
    assert verdict.facts["guest_invalidation_commands"] == ["TLBI_NH_VA", "CFGI_CD sid=0x200"]


def test_check_startup_needs_the_viommu_and_both_hwpts() -> None:
    from harness.scenarios.tier3 import check_startup

    topology = AccelSmmuTopology((BDF,))
    good = [
        _rec(
            "iommufd_backend_alloc_viommu", "iommufd=23 dev_id=1 type=1 hwpt_id=3 viommu_id=4 (0)"
        ),
        _rec(
            "iommufd_backend_alloc_hwpt", "iommufd=23 dev_id=1 pt_id=4 hwpt_type=2 out_hwpt=5 (0)"
        ),
        _rec(
            "iommufd_backend_alloc_hwpt", "iommufd=23 dev_id=1 pt_id=4 hwpt_type=2 out_hwpt=6 (0)"
        ),
        _rec("smmuv3_accel_set_iommu_device", "devfn=0x0 (idev devid=0x1)"),
    ]
    verdict = Verdict("t")
    check_startup(verdict, good, topology)
    assert [c.ok for c in verdict.checks] == [True, True, True]
    failed = Verdict("t")
    check_startup(
        failed, [_rec("iommufd_backend_alloc_viommu", "type=1 viommu_id=0 (-95)")], topology
    )
    assert [c.ok for c in failed.checks] == [False, False, False]


def test_prepare_passthrough_refuses_without_a_host_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.qemu.probe import MissingCapabilityError
    from harness.scenarios.base import Prepared
    from harness.scenarios.runner import PREPARE_HOOKS

    monkeypatch.delenv(command.HOST_DEVICE_ENV, raising=False)
    machine = passthrough_machine(_Image("x86_64"), VtdFirstStage((BDF,)))
    prepared = Prepared(machine, "qemu-system-x86_64", "READY", {}, {})
    with pytest.raises(MissingCapabilityError, match="no --host-device given"):
        PREPARE_HOOKS["tier3-passthrough"](prepared, print)


def test_vtd_option_sets() -> None:
    from harness.scenarios.tier3 import vtd_option_sets

    sets = vtd_option_sets(BDF)
    assert [t.first_stage for t in sets.values()] == [True, False]
    assert all(dict(t.options)["caching-mode"] for t in sets.values())


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.configure(parser)
    return parser.parse_args(argv)


def test_cli_host_device_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(command.HOST_DEVICE_ENV, raising=False)
    args = _parse("run", "--host-device", "01:00.0", "--arch", "x86_64")
    assert command.apply_host_device(args) == "0000:01:00.0"
    assert os.environ[command.HOST_DEVICE_ENV] == "0000:01:00.0"
    assert command.apply_host_device(_parse("run")) is None
    with pytest.raises(ConfigError, match="not a PCI address"):
        command.apply_host_device(_parse("check", "--host-device", "bogus"))


def test_cli_check_exit_status(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.delenv(command.HOST_DEVICE_ENV, raising=False)
    assert command.run(_parse("check")) == 1
    assert "no --host-device given" in capsys.readouterr().out
    ready = hostcheck.HostReport("0000:01:00.0")
    ready.add("host IOMMU can nest", True, "vtd")
    monkeypatch.setattr(hostcheck, "check_host", lambda bdf: ready)
    assert command.run(_parse("check", "--host-device", "01:00.0")) == 0
    assert "tier 3 can run" in capsys.readouterr().out


def test_cli_boot_requires_a_host_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(command.HOST_DEVICE_ENV, raising=False)
    with pytest.raises(ConfigError, match="--host-device BDF is required"):
        command.run(_parse("boot"))


def test_cli_run_picks_the_simulated_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(command.HOST_DEVICE_ENV, raising=False)
    calls: list[tuple[str, str]] = []

    def fake_run(name: str, arch: str, *args: Any, **kwargs: Any) -> Verdict:
        calls.append((name, arch))
        return Verdict(name)

    monkeypatch.setattr("harness.scenarios.runner.run_scenario", fake_run)
    assert command.run(_parse("run")) == 1  # an empty verdict does not pass
    assert command.run(_parse("run", "--arch", "x86_64")) == 1
    assert calls == [("tier3-l2-smmuv3", "arm64"), ("tier3-l2-vtd", "x86_64")]
