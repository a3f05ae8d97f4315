"""Machine description -> QEMU command line.

Pure: the same ``Machine`` and ``RunEndpoints`` always give the same argv.  What differs
between runs (socket paths, the forwarded port, file names) is in ``RunEndpoints``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.host import host_arch as this_host_arch
from harness.qemu.description import (
    Edu,
    IntelIommu,
    Machine,
    Pvpanic,
    SmmuV3,
    UserNic,
    VfioPci,
)

QEMU_BINARIES = {"x86_64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
DEFAULT_CONSOLE = {"x86_64": "ttyS0", "arm64": "ttyAMA0"}
# arm64 keeps the NIC off PCI (virtio-mmio) so the SMMU only sees the devices under test.
DEFAULT_NIC = {"x86_64": "virtio-net-pci", "arm64": "virtio-net-device"}
AUTHORIZED_KEYS_FW_CFG = "opt/viommu-harness/authorized_keys"
#: the guest sshd's host key, made by the harness so that it can verify the guest
HOST_KEY_FW_CFG = "opt/viommu-harness/ssh_host_ed25519_key"


@dataclass(frozen=True)
class RunEndpoints:
    """Per-run paths and ports that the command line refers to."""

    qmp_socket: Path
    console_log: Path
    qemu_log: Path
    authorized_keys: Path | None = None
    ssh_port: int | None = None
    host_key: Path | None = None
    #: a second QMP monitor and an HMP one for people and tools outside the harness
    user_qmp_socket: Path | None = None
    hmp_socket: Path | None = None


def _prop(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _device(driver: str, props: dict[str, Any]) -> str:
    return ",".join([driver, *(f"{k}={_prop(v)}" for k, v in props.items())])


def resolved_accel(machine: Machine, kvm_usable: bool, host_arch: str | None = None) -> str:
    """The accelerator actually used: ``auto`` is KVM only where a guest really runs under it.

    KVM accelerates guests of the host's own architecture only.
    """
    host = host_arch or this_host_arch()
    if machine.accel == "auto":
        return "kvm" if kvm_usable and machine.arch == host else "tcg"
    if machine.accel == "kvm" and machine.arch != host:
        raise ConfigError(f"accel=kvm: {machine.arch} guests cannot use KVM on this {host} host")
    return machine.accel


def build_argv(
    machine: Machine, run: RunEndpoints, accel: str, qemu: str | None = None
) -> list[str]:
    """The full argv for ``machine``; ``accel`` is ``kvm`` or ``tcg`` (see resolved_accel)."""
    if accel not in ("kvm", "tcg"):
        raise ConfigError(f"accel={accel!r}: resolve 'auto' before building the command line")
    argv = [qemu or QEMU_BINARIES[machine.arch]]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]
    argv += _machine_args(machine, accel)
    argv += ["-m", f"{machine.memory_mb}M", "-smp", str(machine.smp)]
    if machine.firmware == "uefi":
        argv += ["-bios", str(machine.uefi_code)]
    argv += ["-kernel", str(machine.kernel), "-initrd", str(machine.initrd)]
    console = machine.console or DEFAULT_CONSOLE[machine.arch]
    append = f"console={console} panic=-1 {machine.append}".strip()
    argv += ["-append", append]
    argv += ["-chardev", f"file,id=console0,path={run.console_log}", "-serial", "chardev:console0"]
    argv += ["-qmp", f"unix:{run.qmp_socket},server=on,wait=off"]
    for sock, mode in ((run.user_qmp_socket, "control"), (run.hmp_socket, "readline")):
        if sock is not None:
            argv += ["-chardev", f"socket,id=mon-{mode},path={sock},server=on,wait=off"]
            argv += ["-mon", f"chardev=mon-{mode},mode={mode}"]
    argv += ["-D", str(run.qemu_log), "-msg", "timestamp=on"]
    if run.authorized_keys is not None:
        argv += ["-fw_cfg", f"name={AUTHORIZED_KEYS_FW_CFG},file={run.authorized_keys}"]
    if run.host_key is not None:
        argv += ["-fw_cfg", f"name={HOST_KEY_FW_CFG},file={run.host_key}"]
    argv += _viommu_device_args(machine)
    for dev in machine.devices:
        argv += _device_args(machine, dev, run)
    argv += list(machine.extra_args)
    return argv


#: ``-accel`` for x86_64 guests under TCG: single-threaded (round-robin) TCG.  Why (issue
#: 19): x86_64 guests under multi-threaded TCG (one host thread per vCPU) were seen to stop
#: taking interrupts on a vCPU — RCU stall "rcu_sched kthread timer wakeup didn't happen",
#: a CPU waiting on a cross-CPU TLB-flush IPI, then QEMU idle.  TCG offers no TSC-deadline
#: timer (the guest's LAPIC timer runs one-shot), so ``-tsc-deadline`` does not apply;
#: the suspect left is timer and IPI delivery to a vCPU halting in another host thread, a
#: race that one thread running every vCPU cannot have.  Not reproduced here: 0 stalls in
#: 300 MTTCG boots and 0 in 300 single-threaded ones (bench/timer_stall.py, the two loops
#: at once): this removes the suspected class of race, not a proven cause.  It costs some
#: boot time where host CPUs are free (agent ready 7.43 s against 6.91 s, medians of those
#: 300 boots each); ``--qemu-arg=-accel --qemu-arg=tcg`` gives MTTCG back, to compare.
#: arm64 keeps MTTCG.
X86_TCG_ACCEL = "tcg,thread=single"


def _machine_args(machine: Machine, accel: str) -> list[str]:
    viommu = machine.viommu
    if machine.arch == "x86_64":
        if accel == "tcg":
            accel = X86_TCG_ACCEL
        opts = ["q35"]
        if accel == "kvm" and isinstance(viommu, IntelIommu):
            opts.append("kernel-irqchip=split")
        cpu = machine.cpu or ("host" if accel == "kvm" else "max")
    else:
        opts = [_virt_machine_type(viommu), "gic-version=3"]
        if isinstance(viommu, SmmuV3) and not viommu.device:
            opts.append("iommu=smmuv3")
        cpu = machine.cpu or "max,pauth-impdef=on"
    if "-accel" in machine.extra_args:  # the description's own -accel options win
        return ["-machine", ",".join(opts), "-cpu", cpu]
    return ["-machine", ",".join(opts), "-accel", accel, "-cpu", cpu]


def _virt_machine_type(viommu: object) -> str:
    """``virt``, or ``virt-9.1`` when the machine's own SMMU must honour stage=1/2.

    From virt-9.2 on, QEMU forces the machine's SMMUv3 to stage=nested and silently
    ignores ``-global arm-smmuv3.stage``; virt-9.1 still honours it (checked with
    qom-get on QEMU 10.0.2).  The user-creatable ``-device arm-smmuv3`` is unaffected.
    """
    if isinstance(viommu, SmmuV3) and not viommu.device and viommu.stage in ("1", "2"):
        return "virt-9.1"
    return "virt"


def _viommu_device_args(machine: Machine) -> list[str]:
    viommu = machine.viommu
    if isinstance(viommu, IntelIommu):
        return ["-device", _device("intel-iommu", viommu.properties())]
    if isinstance(viommu, SmmuV3):
        props = viommu.properties()
        if viommu.device:
            return ["-device", _device("arm-smmuv3", props)]
        return [
            arg
            for name, value in props.items()
            for arg in ("-global", f"arm-smmuv3.{name}={_prop(value)}")
        ]
    return []


def _device_args(machine: Machine, dev: object, run: RunEndpoints) -> list[str]:
    if isinstance(dev, Edu):
        props: dict[str, Any] = {"id": dev.id}
        if dev.addr is not None:
            props["addr"] = dev.addr
        if dev.dma_mask is not None:
            props["dma_mask"] = hex(dev.dma_mask)
        return ["-device", _device("edu", props)]
    if hasattr(dev, "qemu_devices"):  # descriptions that say their own -device list
        return [a for drv, props in dev.qemu_devices() for a in ("-device", _device(drv, props))]
    if isinstance(dev, VfioPci):
        if dev.backend == "iommufd":
            return [
                "-object", f"iommufd,id=iommufd-{dev.id}",
                "-device", _device("vfio-pci", {"host": dev.host, "id": dev.id,
                                                 "iommufd": f"iommufd-{dev.id}"}),
            ]  # fmt: skip
        return ["-device", _device("vfio-pci", {"host": dev.host, "id": dev.id})]
    if isinstance(dev, UserNic):
        netdev = f"user,id={dev.id}"
        if run.ssh_port is not None:
            netdev += f",hostfwd=tcp:127.0.0.1:{run.ssh_port}-:22"
        model = dev.model or DEFAULT_NIC[machine.arch]
        return ["-netdev", netdev, "-device", _device(model, {"netdev": dev.id})]
    if isinstance(dev, Pvpanic):
        return ["-device", "pvpanic" if machine.arch == "x86_64" else "pvpanic-pci"]
    raise ConfigError(f"unknown device type {type(dev).__name__}")
