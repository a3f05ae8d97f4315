"""Kernel objects with explicit lifetimes, freed in an order the kernel accepts.

Each ``IommufdObject`` owns one iommufd object ID; ``close()`` destroys it once
(IOMMU_DESTROY), ``with`` closes it on exit.  ``IommuFD.close()`` destroys whatever is
still alive by *teardown rank* — things that hold references to others go first: HW
queues and vEVENTQs, then vDEVICEs, then devices (which detach), nested HWPTs, vIOMMUs,
paging HWPTs, fault queues, and IOASes last — and then closes the fd.
"""

from __future__ import annotations

import itertools
from types import TracebackType
from typing import ClassVar, Protocol, Self

from harness.driver.backend import Channel
from harness.driver.errors import IoctlError, issues
from harness.driver.layout import layout
from harness.errors import HarnessError
from harness.uapi import iommufd as uapi

RANK_QUEUE = 0
RANK_VDEVICE = 1
RANK_DEVICE = 2
RANK_NESTED = 3
RANK_VIOMMU = 4
RANK_PAGING = 5
RANK_FAULT = 6
RANK_IOAS = 7

_DESTROY = layout(uapi.iommu_destroy)
_DESTROY_SIZE = _DESTROY.size
_IOMMU_DESTROY = int(uapi.IOMMU_DESTROY)
#: creation order of owned objects (teardown breaks rank ties newest first)
sequence = itertools.count()


class HasId(Protocol):
    """Anything naming an iommufd object: its ``id``."""

    @property
    def id(self) -> int: ...


class HasDevId(Protocol):
    """Anything bound to an iommufd as a device: its ``dev_id``."""

    @property
    def dev_id(self) -> int: ...


class Owner(Protocol):
    """What owned objects need of their ``IommuFD``: its channel and its bookkeeping.

    ``owned`` maps each live object's ``seq`` to it (objects add and remove themselves:
    a dict operation, not a method call, on every allocation and free).
    """

    chan: Channel
    teardown_errors: list[str]
    owned: dict[int, Owned]


def obj_id(obj: int | HasId) -> int:
    """The iommufd ID of ``obj`` (an object, or an ID given as int)."""
    return obj if isinstance(obj, int) else obj.id


def dev_id(dev: int | HasDevId) -> int:
    """The iommufd device ID of ``dev`` (a bound device, or an ID given as int)."""
    return dev if isinstance(dev, int) else dev.dev_id


class Owned:
    """Something an ``IommuFD`` tears down: ranked, closable, with a creation sequence."""

    rank: ClassVar[int] = RANK_DEVICE
    kind: ClassVar[str] = "object"

    def __init__(self, ictx: Owner) -> None:
        self.ictx = ictx
        self.seq = seq = next(sequence)
        self.alive = True
        ictx.owned[seq] = self

    def _release(self) -> None:
        """Free the kernel side (subclasses); called once by ``close``."""

    def close(self) -> None:
        """Free the kernel object if still alive; raises ``IoctlError`` if the kernel refuses."""
        if self.alive:
            self._release()
            self.alive = False  # forget(), inline: close is on every object's hot path
            self.ictx.owned.pop(self.seq, None)

    def forget(self) -> None:
        """Stop tracking without a syscall (the kernel already freed it, e.g. a tombstone)."""
        self.alive = False
        self.ictx.owned.pop(self.seq, None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except HarnessError as err:
            self.ictx.teardown_errors.append(f"{self!r}: {err}")


class IommufdObject(Owned):
    """An object with an iommufd ID, destroyed by IOMMU_DESTROY."""

    def __init__(self, ictx: Owner, object_id: int) -> None:
        self.id = object_id
        super().__init__(ictx)

    @issues("IOMMU_DESTROY")
    def destroy(self) -> None:
        """IOMMU_DESTROY this object now (``expect_errno(EBUSY, obj.destroy)`` while in use)."""
        self._release()
        self.forget()

    def _release(self) -> None:
        cmd = bytearray(_DESTROY.pack(_DESTROY_SIZE, self.id))
        chan = self.ictx.chan
        try:  # Channel.call_buf, inline: every object's close passes here
            chan._ioctl(chan.fd, _IOMMU_DESTROY, cmd)
        except OSError as exc:
            raise IoctlError("IOMMU_DESTROY", exc.errno or 0, _DESTROY.show(cmd)) from None

    def __repr__(self) -> str:
        state = "" if self.alive else ", closed"
        return f"{type(self).__name__}(id={self.id}{state})"


def teardown_order(objects: list[Owned]) -> list[Owned]:
    """The order ``teardown`` closes ``objects`` in: by rank, newest first within a rank."""
    return sorted(objects, key=lambda o: (o.rank, -o.seq))


def teardown(objects: list[Owned]) -> list[tuple[str, IoctlError]]:
    """Close ``objects`` in teardown order; returns what the kernel refused, by object."""
    errors: list[tuple[str, IoctlError]] = []
    for obj in teardown_order(objects):
        if not obj.alive:
            continue
        what = repr(obj)
        try:
            obj.close()
        except IoctlError as err:
            obj.forget()
            errors.append((what, err))
    return errors
