"""harness.devices.edu against a software model of QEMU's edu device (hw/misc/edu.c)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.devices import edu as edu_mod
from harness.devices.edu import BUFFER_SIZE, DEFAULT_DMA_MASK, Edu, EduError, EduTimeoutError
from harness.errors import EncodeError

pytestmark = pytest.mark.tier0


class FakeEdu:
    """edu as QEMU 10 implements it, behind VFIO region reads and writes.

    Register accesses of the wrong size are ignored (reads return all ones), a transfer
    completes after ``latency`` polls of the command register, the bus address is ANDed
    with ``dma_mask``, and nothing moves unless bus mastering is on.
    """

    def __init__(self, dma_mask: int = DEFAULT_DMA_MASK, latency: int = 2) -> None:
        self.dma_mask = dma_mask
        self.latency = latency
        self.config = bytearray(256)
        self.ram: dict[int, int] = {}
        self.buffer = bytearray(BUFFER_SIZE)
        self.regs = {0x80: 0, 0x88: 0, 0x90: 0, 0x98: 0}
        self.liveness = 0
        self.pending = 0
        self.accesses: list[tuple[str, int, int]] = []
        self.never_finishes = False

    def read_region(self, index: int, offset: int, length: int) -> bytes:
        if index == edu_mod.CONFIG_REGION:
            return bytes(self.config[offset : offset + length])
        assert index == edu_mod.BAR0_REGION
        self.accesses.append(("read", offset, length))
        value = self._read(offset, length)
        return value.to_bytes(length, "little")

    def _read(self, offset: int, size: int) -> int:
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return (1 << (8 * size)) - 1
        if offset == 0x00:
            return 0x010000ED
        if offset == 0x04:
            return self.liveness
        if offset == 0x98 and self.regs[0x98] & 1 and not self.never_finishes:
            self.pending -= 1
            if self.pending <= 0:
                self._run()
        return self.regs.get(offset, 0) & ((1 << (8 * size)) - 1)

    def write_region(self, index: int, offset: int, data: bytes) -> int:
        if index == edu_mod.CONFIG_REGION:
            self.config[offset : offset + len(data)] = data
            return len(data)
        assert index == edu_mod.BAR0_REGION
        size = len(data)
        value = int.from_bytes(data, "little")
        self.accesses.append(("write", offset, size))
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return size
        if offset == 0x04:
            self.liveness = ~value & 0xFFFFFFFF
        elif offset in (0x80, 0x88, 0x90) and not self.regs[0x98] & 1:
            self.regs[offset] = value
        elif offset == 0x98 and value & 1 and not self.regs[0x98] & 1:
            self.regs[0x98] = value
            self.pending = self.latency
        return size

    def _run(self) -> None:
        src, dst, count, cmd = (self.regs[k] for k in (0x80, 0x88, 0x90, 0x98))
        master = int.from_bytes(self.config[4:6], "little") & edu_mod.PCI_COMMAND_MASTER
        if master:
            if cmd & 2:
                start = src - 0x40000
                for i in range(count):
                    self.ram[(dst & self.dma_mask) + i] = self.buffer[start + i]
            else:
                start = dst - 0x40000
                for i in range(count):
                    self.buffer[start + i] = self.ram.get((src & self.dma_mask) + i, 0)
        self.regs[0x98] = cmd & ~1

    def put(self, address: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            self.ram[address + i] = byte

    def get(self, address: int, length: int) -> bytes:
        return bytes(self.ram.get(address + i, 0) for i in range(length))


def make(**kwargs: int) -> tuple[FakeEdu, Edu]:
    device = FakeEdu(**kwargs)
    return device, Edu(device, dma_mask=device.dma_mask, poll_interval=0)


def test_identify_liveness_and_bus_master() -> None:
    _, edu = make()
    assert edu.identify() == (1, 0)
    assert edu.alive()
    assert edu.command_register() & (edu_mod.PCI_COMMAND_MASTER | edu_mod.PCI_COMMAND_MEMORY) == 6


def test_identify_refuses_another_device() -> None:
    device, edu = make()
    device._read = lambda offset, size: 0x12345678  # type: ignore[method-assign]
    with pytest.raises(EduError, match="0x12345678"):
        edu.identify()


def test_round_trip_through_the_buffer() -> None:
    device, edu = make()
    pattern = bytes(range(256)) * 16
    device.put(0x1000, pattern)
    edu.dma_to_device(0x1000, len(pattern))
    edu.dma_from_device(0x9000, len(pattern))
    assert device.get(0x9000, len(pattern)) == pattern
    assert [t.direction for t in edu.transfers] == ["RAM-to-device", "device-to-RAM"]


def test_register_access_sizes_are_the_ones_edu_accepts() -> None:
    device, edu = make()
    edu.dma_to_device(0x2000, 16, offset=8)
    sizes = {(kind, off): size for kind, off, size in device.accesses}
    assert sizes[("write", 0x80)] == sizes[("write", 0x88)] == sizes[("write", 0x98)] == 8
    assert all(size == 4 for kind, off, size in device.accesses if off < 0x80)


def test_copy_splits_into_buffer_sized_transfers() -> None:
    device, edu = make()
    data = bytes((i * 7) & 0xFF for i in range(3 * BUFFER_SIZE + 100))
    device.put(0x100000, data)
    transfers = edu.copy(0x100000, 0x200000, len(data))
    assert device.get(0x200000, len(data)) == data
    assert [t.length for t in transfers] == [4096, 4096, 4096, 4096, 4096, 4096, 100, 100]


def test_no_bus_master_no_dma() -> None:
    device = FakeEdu()
    edu = Edu(device, enable=False, poll_interval=0)
    device.put(0x1000, b"abcd")
    edu.dma_to_device(0x1000, 4)
    edu.dma_from_device(0x3000, 4)
    assert device.get(0x3000, 4) == bytes(4)


@pytest.mark.parametrize(
    ("iova", "length", "offset", "field"),
    [
        (DEFAULT_DMA_MASK + 1, 4, 0, "edu.DMA_ADDR"),
        (DEFAULT_DMA_MASK - 1, 4, 0, "edu.DMA_ADDR"),
        (-4096, 4, 0, "edu.DMA_ADDR"),
        (0x1000, 0, 0, "edu.DMA_COUNT"),
        (0x1000, BUFFER_SIZE + 1, 0, "edu.DMA_COUNT"),
        (0x1000, 16, BUFFER_SIZE - 8, "edu.buffer"),
        (0x1000, 16, -1, "edu.buffer"),
    ],
)
def test_refuses_what_edu_would_clamp_or_overrun(
    iova: int, length: int, offset: int, field: str
) -> None:
    device, edu = make()
    with pytest.raises(EncodeError) as err:
        edu.dma_from_device(iova, length, offset=offset)
    assert err.value.field == field
    assert ("write", 0x98, 8) not in device.accesses


def test_wider_mask_allows_higher_addresses() -> None:
    device, edu = make(dma_mask=(1 << 32) - 1)
    device.put(0xF000_0000, b"wide")
    edu.dma_to_device(0xF000_0000, 4)
    edu.dma_from_device(0x1000, 4)
    assert device.get(0x1000, 4) == b"wide"


def test_copy_refuses_a_range_crossing_the_mask() -> None:
    _, edu = make()
    with pytest.raises(EncodeError, match="DMA mask"):
        edu.copy(DEFAULT_DMA_MASK - 0xFFF, 0, 0x2000)


def test_bad_mask_is_refused() -> None:
    with pytest.raises(EncodeError, match="mask"):
        Edu(FakeEdu(), dma_mask=0x1234)


def test_wait_idle_times_out() -> None:
    device, edu = make()
    device.never_finishes = True
    with pytest.raises(EduTimeoutError):
        edu.dma_to_device(0x1000, 4, timeout=0.05)
    assert isinstance(EduTimeoutError("x"), TimeoutError)


@settings(max_examples=40, deadline=None)
@given(
    src=st.integers(0, DEFAULT_DMA_MASK - BUFFER_SIZE),
    dst=st.integers(0, DEFAULT_DMA_MASK - BUFFER_SIZE),
    length=st.integers(1, BUFFER_SIZE),
    seed=st.integers(0, 255),
)
def test_round_trip_property(src: int, dst: int, length: int, seed: int) -> None:
    device, edu = make(latency=1)
    data = bytes((seed + i * 31) & 0xFF for i in range(length))
    device.put(src, data)
    edu.dma_to_device(src, length)
    edu.dma_from_device(dst, length)
    assert device.get(dst, length) == data


# -- the DmaDriver ops (the VFIO selftests' ops table) ---------------------------------------


def test_edu_is_a_dma_driver_memcpy_start_returns_before_the_copy_is_done() -> None:
    from harness.devices.base import DmaDriver

    device, edu = make(latency=3)
    driver: DmaDriver = edu  # mypy checks the ops table's shape
    driver.init()
    data = bytes(range(200))
    device.put(0x3000, data)
    driver.memcpy_start(0x3000, 0x8000, len(data), count=2)
    assert edu.busy and device.get(0x8000, len(data)) == bytes(len(data))  # started, not done
    driver.memcpy_wait()
    assert device.get(0x8000, len(data)) == data
    assert not edu.busy


def test_memcpy_limits_are_refused_not_truncated() -> None:
    _, edu = make()
    with pytest.raises(EncodeError, match="size"):
        edu.memcpy_start(0x1000, 0x2000, edu.max_memcpy_size + 1)
    with pytest.raises(EncodeError, match="count"):
        edu.memcpy_start(0x1000, 0x2000, 16, count=edu.max_memcpy_count + 1)
    assert not edu.busy


def test_remove_stops_bus_mastering() -> None:
    device, edu = make()
    edu.init()
    device.put(0x4000, b"\x5a" * 32)
    edu.remove()
    assert not edu.command_register() & edu_mod.PCI_COMMAND_MASTER
    edu.memcpy_start(0x4000, 0xA000, 32)
    edu.memcpy_wait()
    assert device.get(0xA000, 32) == bytes(32)  # no DMA after remove()
