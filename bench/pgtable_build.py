"""Time building tables that map 1 GiB with 4 KiB pages (262,144 leaves), x86-64 and Arm 4K.

Baseline: a bare Python loop writing 262,144 u64s with ``struct.pack_into`` into a
bytearray, the floor for any per-entry builder. Figures are medians of a few runs.
"""

from __future__ import annotations

import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.pgtable import ArmPageTable, PageTable, X86PageTable

LEAVES = 262_144
MAPPED = LEAVES * 4096
IOVA, PA, BASE = 0x4000_0000, 0x1_0000_0000, 0x8000_0000
MEMORY = 520 * 4096
RUNS = 5


def median_seconds(action: Callable[[], object], runs: int = RUNS) -> float:
    """Median wall time of ``action`` over ``runs`` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baseline() -> None:
    """Write 262,144 u64s one by one: the per-entry floor."""
    buffer = bytearray(LEAVES * 8)
    pack_into = struct.Struct("<Q").pack_into
    for i in range(LEAVES):
        pack_into(buffer, i * 8, PA + i * 4096 | 0x67)


def build(factory: Callable[[], PageTable[Any]]) -> Callable[[], None]:
    """A fresh table mapping 1 GiB with 4 KiB pages in one call."""

    def run() -> None:
        table = factory()
        table.map(IOVA, PA, MAPPED, page_size=4096)

    return run


def per_page_calls(factory: Callable[[], PageTable[Any]], pages: int) -> Callable[[], None]:
    """A fresh table mapping ``pages`` 4 KiB pages with one map() call each."""

    def run() -> None:
        table = factory()
        for i in range(pages):
            table.map(IOVA + i * 4096, PA + i * 4096, 4096)

    return run


def main() -> None:
    """Print one ``name: value unit`` line per figure."""
    floor = median_seconds(baseline)
    print(f"baseline_pack_into_262144_u64: {floor * 1e3:.1f} ms")
    factories: dict[str, Callable[[], PageTable[Any]]] = {
        "x86_64_4level": lambda: X86PageTable(MEMORY, BASE),
        "arm_4k_t0sz16": lambda: ArmPageTable(MEMORY, BASE, granule=4096, t0sz=16),
    }
    for name, factory in factories.items():
        seconds = median_seconds(build(factory))
        print(f"{name}_map_1GiB_4KiB: {seconds * 1e3:.1f} ms")
        print(f"{name}_map_1GiB_4KiB_vs_baseline: {seconds / floor:.3f} ratio")
    pages = 16_384
    seconds = median_seconds(per_page_calls(factories["x86_64_4level"], pages), runs=3)
    print(f"x86_64_4level_map_per_page_call: {seconds / pages * 1e6:.1f} us")
    print(f"x86_64_4level_map_1GiB_one_call_per_page_estimate: {seconds / pages * LEAVES:.2f} s")


if __name__ == "__main__":
    main()
