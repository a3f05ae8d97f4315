"""Property tests run once for every format: walk(build(mappings)) agrees with the mappings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.pgtable import (
    ArmPageTable,
    Fault,
    FaultKind,
    PageTable,
    Perms,
    Translation,
    X86PageTable,
)

pytestmark = pytest.mark.tier0

BASE = 0x8000_0000
MAX_MAPPINGS = 8
OUTPUT_BITS = 40
PERMS = [Perms.READ | extra for extra in range(0, 16, 2)]


@dataclass(frozen=True)
class Config:
    """A format and configuration, with where the tests may place mappings."""

    name: str
    make: Callable[[int], PageTable[Any]]
    table_size: int
    input_bits: int
    canonical: bool = False


CONFIGS = [
    Config("x86-4", lambda n: X86PageTable(n, BASE), 4096, 48, canonical=True),
    Config("x86-5", lambda n: X86PageTable(n, BASE, levels=5), 4096, 57, canonical=True),
    Config("arm-4k-48", lambda n: ArmPageTable(n, BASE), 4096, 48),
    Config("arm-4k-31", lambda n: ArmPageTable(n, BASE, t0sz=33), 4096, 31),
    Config("arm-16k-48", lambda n: ArmPageTable(n, BASE, granule=16384), 16384, 48),
    Config("arm-16k-28", lambda n: ArmPageTable(n, BASE, granule=16384, t0sz=36), 16384, 28),
    Config("arm-64k-48", lambda n: ArmPageTable(n, BASE, granule=65536), 65536, 48),
    Config("arm-64k-39", lambda n: ArmPageTable(n, BASE, granule=65536, t0sz=25), 65536, 39),
]


@dataclass(frozen=True)
class Mapping:
    """What one map() call asked for."""

    iova: int
    pa: int
    size: int
    page_size: int
    perms: Perms

    def covers(self, address: int) -> bool:
        """True if ``address`` is inside the mapping."""
        return self.iova <= address < self.iova + self.size


def new_table(config: Config, pt_levels: int) -> PageTable[Any]:
    """A table with room for every mapping the strategies can produce."""
    return config.make((MAX_MAPPINGS * 4 * pt_levels + 1) * config.table_size)


@st.composite
def mapping_sets(draw: st.DrawFn, config: Config) -> list[Mapping]:
    """Non-overlapping mappings of mixed page sizes inside one window of the input space."""
    probe = config.make(config.table_size)
    sizes = probe.page_sizes
    window = min(16 * sizes[-1], 1 << config.input_bits)
    half = 1 << (config.input_bits - 1 if config.canonical else config.input_bits)
    window_base = draw(st.integers(0, half // window - 1)) * window
    if config.canonical and draw(st.booleans()):
        window_base |= ((1 << 64) - 1) & ~(half - 1)
    mappings: list[Mapping] = []
    for _ in range(draw(st.integers(1, MAX_MAPPINGS))):
        page_size = draw(st.sampled_from(sizes))
        pages = draw(st.integers(1, min(4, window // page_size)))
        slot = draw(st.integers(0, window // page_size - pages))
        iova = window_base + slot * page_size
        size = pages * page_size
        if any(m.iova < iova + size and iova < m.iova + m.size for m in mappings):
            continue
        pa = draw(st.integers(0, (1 << OUTPUT_BITS) // page_size - pages)) * page_size
        mappings.append(Mapping(iova, pa, size, page_size, draw(st.sampled_from(PERMS))))
    return mappings


def build(config: Config, mappings: list[Mapping]) -> PageTable[Any]:
    """A table holding ``mappings``."""
    pt = new_table(config, len(config.make(config.table_size).levels))
    for m in mappings:
        pt.map(m.iova, m.pa, m.size, m.perms, page_size=m.page_size)
    return pt


def samples(m: Mapping, offset: int) -> list[int]:
    """Addresses inside ``m`` worth walking: first, last and one chosen by ``offset``."""
    return [m.iova, m.iova + m.size - 1, m.iova + offset % m.size]


def expected_fault_level(pt: PageTable[Any], ever: list[Mapping], address: int) -> int:
    """The level whose entry is empty for an unmapped ``address``, from the mapping history.

    A table exists under an entry iff some mapping ever made with smaller pages touched the
    entry's span; unmapping leaves tables in place.
    """
    for lvl in pt.geometry:
        block = address & ~(lvl.span - 1)
        below = [m for m in ever if m.page_size < lvl.span]
        if not any(m.iova < block + lvl.span and block < m.iova + m.size for m in below):
            return lvl.number
    raise AssertionError(f"{address:#x} has a table at every level")


def check_mapped(pt: PageTable[Any], m: Mapping, pa: int, offset: int) -> None:
    """Every sampled address of ``m`` translates to ``pa`` + offset with m's size and rights."""
    for address in samples(m, offset):
        result = pt.walk(address)
        assert isinstance(result, Translation), (hex(address), result)
        assert result.output == pa + address - m.iova
        assert result.page_size == m.page_size
        assert result.level == pt.level_for_size(m.page_size)
        assert result.perms == m.perms


def outside_addresses(mappings: list[Mapping], extra: list[int]) -> list[int]:
    """Addresses next to each mapping plus ``extra``, keeping those no mapping covers."""
    candidates = extra + [a for m in mappings for a in (m.iova - 1, m.iova + m.size)]
    return [a for a in candidates if not any(m.covers(a) for m in mappings)]


def valid_input(config: Config, address: int) -> bool:
    """True if ``address`` is inside the configuration's input space."""
    if address < 0 or address >> 64:
        return False
    if not config.canonical:
        return not address >> config.input_bits
    top = address >> (config.input_bits - 1)
    return top in (0, (1 << (65 - config.input_bits)) - 1)


WALK_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@WALK_SETTINGS
@given(data=st.data())
def test_walk_of_build_matches_mappings(config: Config, data: st.DataObject) -> None:
    mappings = data.draw(mapping_sets(config))
    offset = data.draw(st.integers(0, 1 << 64))
    pt = build(config, mappings)
    for m in mappings:
        check_mapped(pt, m, m.pa, offset)
    extra = data.draw(st.lists(st.integers(0, (1 << 64) - 1), max_size=4))
    for address in outside_addresses(mappings, extra):
        fault = pt.walk(address)
        assert isinstance(fault, Fault), (hex(address), fault)
        if not valid_input(config, address):
            assert fault.kind == FaultKind.INPUT_RANGE
            continue
        assert fault.kind == FaultKind.NOT_PRESENT
        assert fault.level == expected_fault_level(pt, mappings, address), hex(address)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_unmap_and_remap(config: Config, data: st.DataObject) -> None:
    mappings = data.draw(mapping_sets(config))
    pt = build(config, mappings)
    pt.mark_clean()
    snapshot = bytes(pt.memory)
    kept, removed = [], []
    for m in mappings:
        action = data.draw(st.sampled_from(["keep", "unmap", "remap"]))
        if action == "unmap":
            assert pt.unmap(m.iova, m.size) == m.size
            removed.append(m)
            continue
        if action == "remap":
            new_pa = data.draw(st.integers(0, (1 << OUTPUT_BITS) // m.page_size - 1)) * m.page_size
            before = pt.walk(m.iova)
            assert isinstance(before, Translation)
            slot = pt.remap(m.iova, new_pa)
            after = pt.walk(m.iova)
            assert isinstance(after, Translation)
            assert slot == before.descriptor_address == after.descriptor_address
            assert (after.output, after.perms, after.attrs) == (new_pa, m.perms, before.attrs)
            if m.size > m.page_size:
                rest = Mapping(
                    m.iova + m.page_size,
                    m.pa + m.page_size,
                    m.size - m.page_size,
                    m.page_size,
                    m.perms,
                )
                check_mapped(pt, rest, m.pa + m.page_size, 0)
        kept.append(m)
    for m in kept:
        for address in samples(m, 7 * m.page_size // 3):
            result = pt.walk(address)
            assert isinstance(result, Translation), (hex(address), result)
            assert result.page_size == m.page_size
    for m in removed:
        for address in samples(m, 5):
            fault = pt.walk(address)
            assert isinstance(fault, Fault)
            assert fault.level == expected_fault_level(pt, mappings, address)
    copy = bytearray(snapshot)
    pt.sync_into(copy)
    assert copy == pt.memory
    assert pt.dirty_ranges() == []


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
@SETTINGS
@given(data=st.data())
def test_overlapping_map_is_rejected_and_changes_nothing(
    config: Config, data: st.DataObject
) -> None:
    mappings = data.draw(mapping_sets(config))
    pt = build(config, mappings)
    target = data.draw(st.sampled_from(mappings))
    page_size = data.draw(st.sampled_from(pt.page_sizes))
    address = target.iova + data.draw(st.integers(0, target.size - 1))
    iova = address & ~(page_size - 1)
    before = bytes(pt.memory)
    pt.mark_clean()
    with pytest.raises(Exception, match="already mapped") as error:
        pt.map(iova, 0, page_size, page_size=page_size)
    assert getattr(error.value, "field", None) == "iova"
    assert bytes(pt.memory) == before
    assert pt.dirty_ranges() == []
