"""QEMU's ``edu`` device as a DMA engine, driven through a VFIO device from inside a guest.

Register map (QEMU ``hw/misc/edu.c``, ``docs/specs/edu.rst``), BAR0, little endian:

    0x00 (RO, 4)  identification 0xRRrr00ed (major RR, minor rr)
    0x04 (RW, 4)  liveness check: reads back the bitwise inverse of what was written
    0x20 (RW, 4)  status, 0x24 (RO, 4) interrupt status, 0x60 / 0x64 (WO, 4) raise / ack
    0x80 (RW, 8)  DMA source address
    0x88 (RW, 8)  DMA destination address
    0x90 (RW, 8)  DMA transfer count
    0x98 (RW, 8)  DMA command: 0x1 start (cleared when done), 0x2 direction (0: RAM to
                  device, 1: device to RAM), 0x4 raise interrupt 0x100 when done

Registers below 0x80 take only 4-byte accesses, the DMA ones 4 or 8; other sizes are
ignored.  The device side of a transfer is its 4 KiB buffer at 0x40000..0x40fff; QEMU only
*logs* a transfer outside it (and then copies out of bounds of its own buffer), so this
class refuses one.  The bus side is ANDed with the device's DMA mask (``dma_mask``
property, 28 bits by default) without telling anyone, so a bus address beyond the mask is
refused here too.  A transfer starts 100 ms of QEMU's virtual clock after the command is
written; DMA registers written meanwhile are ignored, so ``wait_idle`` polls the command.

The class is vIOMMU-agnostic: it needs only ``read_region`` / ``write_region`` on the
device (``harness.driver.vfio.VfioDevice`` has them); bus addresses are whatever the
device's IOMMU domain translates (IOVAs), or guest-physical addresses without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from harness.errors import EncodeError, HarnessError

EDU_VENDOR_ID = 0x1234
EDU_DEVICE_ID = 0x11E8

BAR0_REGION = 0
CONFIG_REGION = 7
"""VFIO_PCI_BAR0_REGION_INDEX and VFIO_PCI_CONFIG_REGION_INDEX."""

REG_IDENT = 0x00
REG_LIVENESS = 0x04
REG_STATUS = 0x20
REG_IRQ_STATUS = 0x24
REG_IRQ_RAISE = 0x60
REG_IRQ_ACK = 0x64
REG_DMA_SRC = 0x80
REG_DMA_DST = 0x88
REG_DMA_COUNT = 0x90
REG_DMA_CMD = 0x98

DMA_CMD_RUN = 0x1
DMA_CMD_TO_RAM = 0x2
DMA_CMD_IRQ = 0x4
DMA_IRQ = 0x100

BUFFER_ADDR = 0x40000
BUFFER_SIZE = 4096
DEFAULT_DMA_MASK = (1 << 28) - 1
IDENT_LOW = 0xED

PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4

_U64_MAX = (1 << 64) - 1


class RegionIO(Protocol):
    """What ``Edu`` needs from a VFIO device: reads and writes at offsets of its regions."""

    def read_region(self, index: int, offset: int, length: int) -> bytes: ...

    def write_region(self, index: int, offset: int, data: bytes) -> int: ...


class EduError(HarnessError):
    """The device did not behave like edu (wrong identification, a transfer that never ends)."""


class EduTimeoutError(EduError, TimeoutError):
    """A DMA transfer was still running when ``wait_idle``'s timeout expired."""


@dataclass(frozen=True)
class Transfer:
    """One DMA transfer as programmed: bus address, buffer offset, length and direction."""

    bus_address: int
    buffer_offset: int
    length: int
    to_ram: bool
    seconds: float

    @property
    def direction(self) -> str:
        return "device-to-RAM" if self.to_ram else "RAM-to-device"


def check_transfer(
    bus_address: int, length: int, buffer_offset: int, dma_mask: int = DEFAULT_DMA_MASK
) -> None:
    """Refuse a transfer edu would silently clamp or run outside its buffer (EncodeError)."""
    if not 1 <= length <= BUFFER_SIZE:
        raise EncodeError("edu.DMA_COUNT", f"{length} bytes is outside 1..{BUFFER_SIZE}")
    if not 0 <= buffer_offset <= BUFFER_SIZE - length:
        raise EncodeError(
            "edu.buffer",
            f"offset {buffer_offset:#x} + {length:#x} bytes leaves the {BUFFER_SIZE}-byte buffer",
        )
    last = bus_address + length - 1
    if bus_address < 0 or last > _U64_MAX:
        raise EncodeError("edu.DMA_ADDR", f"{bus_address:#x} is not a 64-bit bus address")
    if bus_address & ~dma_mask or last & ~dma_mask:
        raise EncodeError(
            "edu.DMA_ADDR",
            f"{bus_address:#x}..{last:#x} exceeds the DMA mask {dma_mask:#x} "
            "(edu would clamp it to another address)",
        )


class Edu:
    """edu's DMA engine over a VFIO device: ``dma_to_device``, ``dma_from_device``, ``copy``.

    Also a ``harness.devices.base.DmaDriver`` (the VFIO selftests' ops table): a memcpy is
    one buffer-full at most (edu copies through its 4 KiB buffer), ``memcpy_start``
    programs the first transfer and returns, ``memcpy_wait`` drives the rest.
    """

    max_memcpy_size = BUFFER_SIZE
    max_memcpy_count = 64

    def __init__(
        self,
        device: RegionIO,
        *,
        dma_mask: int = DEFAULT_DMA_MASK,
        enable: bool = True,
        poll_interval: float = 0.005,
    ) -> None:
        if not 0 < dma_mask <= _U64_MAX or dma_mask & (dma_mask + 1):
            raise EncodeError("edu.dma_mask", f"{dma_mask:#x} is not a mask of low bits")
        self.device = device
        self.dma_mask = dma_mask
        self.poll_interval = poll_interval
        self.transfers: list[Transfer] = []
        self._queued: list[tuple[int, int, int, bool]] = []
        if enable:
            self.enable()

    # --- registers ------------------------------------------------------------------

    def read32(self, offset: int) -> int:
        return int.from_bytes(self.device.read_region(BAR0_REGION, offset, 4), "little")

    def write32(self, offset: int, value: int) -> None:
        self.device.write_region(BAR0_REGION, offset, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    def read64(self, offset: int) -> int:
        return int.from_bytes(self.device.read_region(BAR0_REGION, offset, 8), "little")

    def write64(self, offset: int, value: int) -> None:
        self.device.write_region(BAR0_REGION, offset, (value & _U64_MAX).to_bytes(8, "little"))

    # --- identity and setup ---------------------------------------------------------

    def identify(self) -> tuple[int, int]:
        """(major, minor) from the identification register; EduError if it is not edu."""
        ident = self.read32(REG_IDENT)
        if ident & 0xFFFF != IDENT_LOW:
            raise EduError(f"edu identification register reads {ident:#010x}, not 0x....00ed")
        return ident >> 24, (ident >> 16) & 0xFF

    def alive(self, probe: int = 0x5A5AA5A5) -> bool:
        """The liveness register inverts what is written to it."""
        self.write32(REG_LIVENESS, probe)
        return self.read32(REG_LIVENESS) == ~probe & 0xFFFFFFFF

    def command_register(self) -> int:
        """PCI_COMMAND from config space."""
        return int.from_bytes(self.device.read_region(CONFIG_REGION, PCI_COMMAND, 2), "little")

    def enable(self) -> None:
        """Set memory decoding and bus mastering: without it edu's DMA reaches nothing."""
        command = self.command_register()
        wanted = command | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
        if wanted != command:
            self.device.write_region(CONFIG_REGION, PCI_COMMAND, wanted.to_bytes(2, "little"))

    # --- DMA ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A transfer is programmed and not finished."""
        return bool(self.read64(REG_DMA_CMD) & DMA_CMD_RUN)

    def wait_idle(self, timeout: float = 10.0) -> float:
        """Poll until no transfer runs; seconds waited, EduTimeoutError after ``timeout``."""
        start = time.monotonic()
        while self.busy:
            waited = time.monotonic() - start
            if waited > timeout:
                raise EduTimeoutError(f"edu DMA still running after {waited:.1f}s")
            time.sleep(self.poll_interval)
        return time.monotonic() - start

    def _transfer(
        self, bus_address: int, length: int, buffer_offset: int, to_ram: bool, timeout: float
    ) -> Transfer:
        self.wait_idle(timeout)
        start = time.monotonic()
        self._start(bus_address, length, buffer_offset, to_ram)
        self.wait_idle(timeout)
        done = Transfer(bus_address, buffer_offset, length, to_ram, time.monotonic() - start)
        self.transfers.append(done)
        return done

    def _start(self, bus_address: int, length: int, buffer_offset: int, to_ram: bool) -> None:
        """Program one transfer and return without waiting for it."""
        check_transfer(bus_address, length, buffer_offset, self.dma_mask)
        device_address = BUFFER_ADDR + buffer_offset
        if to_ram:
            self.write64(REG_DMA_SRC, device_address)
            self.write64(REG_DMA_DST, bus_address)
        else:
            self.write64(REG_DMA_SRC, bus_address)
            self.write64(REG_DMA_DST, device_address)
        self.write64(REG_DMA_COUNT, length)
        self.write64(REG_DMA_CMD, DMA_CMD_RUN | (DMA_CMD_TO_RAM if to_ram else 0))

    def dma_to_device(
        self, iova: int, length: int, *, offset: int = 0, timeout: float = 10.0
    ) -> Transfer:
        """Copy ``length`` bytes from bus address ``iova`` into the buffer at ``offset``."""
        return self._transfer(iova, length, offset, False, timeout)

    def dma_from_device(
        self, iova: int, length: int, *, offset: int = 0, timeout: float = 10.0
    ) -> Transfer:
        """Copy ``length`` bytes from the buffer at ``offset`` to bus address ``iova``."""
        return self._transfer(iova, length, offset, True, timeout)

    def copy(
        self, src_iova: int, dst_iova: int, length: int, *, timeout: float = 10.0
    ) -> list[Transfer]:
        """Copy ``length`` bytes between bus addresses through the buffer, 4 KiB at a time."""
        if length <= 0:
            raise EncodeError("edu.DMA_COUNT", f"{length} bytes is not positive")
        check_transfer(src_iova, 1, 0, self.dma_mask)
        check_transfer(src_iova + length - 1, 1, 0, self.dma_mask)
        check_transfer(dst_iova, 1, 0, self.dma_mask)
        check_transfer(dst_iova + length - 1, 1, 0, self.dma_mask)
        done: list[Transfer] = []
        for start in range(0, length, BUFFER_SIZE):
            chunk = min(BUFFER_SIZE, length - start)
            done.append(self.dma_to_device(src_iova + start, chunk, timeout=timeout))
            done.append(self.dma_from_device(dst_iova + start, chunk, timeout=timeout))
        return done

    # --- the DmaDriver ops ----------------------------------------------------------

    def init(self) -> None:
        """Check the device is edu and alive, and let it master the bus."""
        self.identify()
        if not self.alive():
            raise EduError("edu liveness register does not invert what is written")
        self.enable()

    def remove(self) -> None:
        """Finish what runs, drop what is queued, and turn bus mastering off."""
        self._queued.clear()
        self.wait_idle()
        command = self.command_register() & ~PCI_COMMAND_MASTER
        self.device.write_region(CONFIG_REGION, PCI_COMMAND, command.to_bytes(2, "little"))

    def memcpy_start(self, src: int, dst: int, size: int, count: int = 1) -> None:
        """Queue ``count`` copies of ``size`` bytes ``src`` → ``dst`` and start the first."""
        if not 0 < size <= self.max_memcpy_size:
            raise EncodeError("edu memcpy size", f"{size} is not in 1..{self.max_memcpy_size}")
        if not 0 < count <= self.max_memcpy_count:
            raise EncodeError("edu memcpy count", f"{count} is not in 1..{self.max_memcpy_count}")
        check_transfer(src, size, 0, self.dma_mask)
        check_transfer(dst, size, 0, self.dma_mask)
        for _ in range(count):
            self._queued += [(src, size, 0, False), (dst, size, 0, True)]
        self._start(*self._queued.pop(0))

    def memcpy_wait(self, timeout: float = 10.0) -> float:
        """Drive the queued transfers to the end; seconds waited."""
        start = time.monotonic()
        self.wait_idle(timeout)
        while self._queued:
            self._transfer(*self._queued.pop(0), timeout)
        return time.monotonic() - start

    def send_msi(self) -> None:
        """Raise edu's interrupt (MSI when the guest enabled it, else INTx)."""
        self.write32(REG_IRQ_RAISE, 1)

    # --- interrupts (polled) -------------------------------------------------------

    def irq_status(self) -> int:
        return self.read32(REG_IRQ_STATUS)

    def ack_irq(self, bits: int) -> None:
        self.write32(REG_IRQ_ACK, bits)
