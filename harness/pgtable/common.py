"""Values shared by every page-table format: permissions, walk results and level geometry."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

AttrsT = TypeVar("AttrsT")


class Perms(enum.IntFlag):
    """What a mapping grants; as a walk's ``access``, what a request asks for."""

    READ = 1
    WRITE = 2
    EXEC = 4
    PRIV = 8
    """On a mapping: only privileged (supervisor) requests may use it. On an access: the
    request is privileged. DMA without a PASID privilege flag is unprivileged."""


READ_WRITE = Perms.READ | Perms.WRITE


class FaultKind(enum.Enum):
    """Why a walk stopped."""

    NOT_PRESENT = "not present"
    RESERVED_BIT = "reserved bit set"
    INVALID_DESCRIPTOR = "invalid descriptor"
    ADDRESS_SIZE = "address size"
    INPUT_RANGE = "input address out of range"
    ACCESS_FLAG = "access flag clear"
    PERMISSION = "permission"


class Level(NamedTuple):
    """One level of a format's radix tree, named as the format's specification names it."""

    number: int
    shift: int
    entries: int
    leaf: bool

    @property
    def span(self) -> int:
        """Bytes of input address space one entry at this level covers."""
        return 1 << self.shift


@dataclass(frozen=True)
class Translation(Generic[AttrsT]):
    """A successful walk: where ``iova`` goes and with which rights and attributes."""

    iova: int
    output: int
    page_size: int
    level: int
    perms: Perms
    attrs: AttrsT
    descriptor: int
    descriptor_address: int

    @property
    def page_iova(self) -> int:
        """First input address of the page or block holding ``iova``."""
        return self.iova & ~(self.page_size - 1)

    @property
    def page_output(self) -> int:
        """First output address of that page or block."""
        return self.output & ~(self.page_size - 1)


@dataclass(frozen=True)
class Fault:
    """A failed walk: the level that faulted and why.

    ``code`` is what the hardware would report: the VT-d fault reason for x86 first-stage
    tables, the SMMUv3 event type (F_TRANSLATION 0x10, F_ADDR_SIZE 0x11, F_ACCESS 0x12,
    F_PERMISSION 0x13) for Arm stage 1; None where the format defines none.
    """

    iova: int
    level: int
    kind: FaultKind
    reason: str
    code: int | None = None
    descriptor: int | None = None
    descriptor_address: int | None = None
