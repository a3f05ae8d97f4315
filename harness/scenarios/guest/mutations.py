"""Deliberate breakages for the mutation tests: each breaks one thing a headline check is about.

A mutation test applies one of these inside the guest's agent, runs a scenario on the same
guest and asserts that the verdict FAILS on the row that checks that thing (see
docs/MUTATIONS.md).  ``apply(name)`` patches the agent process only (no kernel or QEMU
state changes, except ``kernel-warn``, which writes a WARNING record into the kernel log);
``revert()`` undoes every patch.  Nothing here runs unless a test asks for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from guests.agent.server import method

#: (owner, attribute, original value) of every patch in force
_PATCHES: list[tuple[Any, str, Any]] = []


def _patch(owner: Any, name: str, value: Any) -> None:
    _PATCHES.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def _invalidate_noop() -> None:
    """IOMMU_HWPT_INVALIDATE on a vIOMMU is never issued; it claims every entry was handled."""
    from harness.driver.iommufd import VIOMMU

    def invalidate(self: Any, entries: Any, data_type: int, **kwargs: Any) -> int:
        entry_len = int(kwargs.get("entry_len") or 16)
        return len(bytes(entries)) // entry_len if entries else 0

    _patch(VIOMMU, "invalidate", invalidate)


def _vste_wrong_cd_pointer() -> None:
    """Every stage-1 vSTE points one page past the CD table it was built for."""
    import harness.smmuv3 as smmuv3

    build = smmuv3.build_nested_ste

    def wrong(kind: str, *args: Any, **kwargs: Any) -> bytes:
        if kwargs.get("cd_table") is not None:
            kwargs["cd_table"] = int(kwargs["cd_table"]) + 0x1000
        return bytes(build(kind, *args, **kwargs))

    _patch(smmuv3, "build_nested_ste", wrong)


def _veventq_drop_record() -> None:
    """The first vEVENTQ record of every read is dropped before anyone sees it."""
    from harness.driver.iommufd import EventQueue
    from harness.rings.veventq import HEADER, SMMUV3_RECORD_SIZE

    read_raw = EventQueue.read_raw
    size = HEADER.size + SMMUV3_RECORD_SIZE

    def dropping(self: Any, count: int = 4096) -> bytes:
        data = bytes(read_raw(self, count))
        return data[size:] if len(data) >= size else data

    _patch(EventQueue, "read_raw", dropping)


def _dma_flip_byte() -> None:
    """Every byte string read back from DMA memory has its first byte flipped."""
    from harness.driver.memory import DmaBuffer

    read = DmaBuffer.read

    def flipped(self: Any, offset: int = 0, length: int | None = None) -> bytes:
        data = bytearray(read(self, offset, length))
        if data:
            data[0] ^= 0xFF
        return bytes(data)

    _patch(DmaBuffer, "read", flipped)


def _kernel_warn() -> None:
    """A WARNING record, as the kernel prints one, in the kernel log."""
    with open("/dev/kmsg", "w") as kmsg:
        kmsg.write(
            "WARNING: CPU: 0 PID: 1 at drivers/iommu/iommufd/viommu.c:1"
            " harness_mutation_kernel_warn+0x0/0x4\n"
        )


MUTATIONS: dict[str, Callable[[], None]] = {
    "invalidate-noop": _invalidate_noop,
    "vste-wrong-cd-pointer": _vste_wrong_cd_pointer,
    "veventq-drop-record": _veventq_drop_record,
    "dma-flip-byte": _dma_flip_byte,
    "kernel-warn": _kernel_warn,
}


@method
def apply(name: str) -> list[str]:
    """Put mutation ``name`` in force; the names of every mutation now in force."""
    if name not in MUTATIONS:
        raise ValueError(f"unknown mutation {name!r}; known: {', '.join(sorted(MUTATIONS))}")
    MUTATIONS[name]()
    return [f"{getattr(o, '__name__', o)}.{a}" for o, a, _ in _PATCHES]


@method
def revert() -> int:
    """Undo every patch, newest first; how many were undone."""
    count = len(_PATCHES)
    while _PATCHES:
        owner, name, original = _PATCHES.pop()
        setattr(owner, name, original)
    return count
