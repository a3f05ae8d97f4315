"""How the driver reaches the kernel: a ``Backend`` of syscalls and the ``Channel`` over one fd.

``OsBackend`` is the real thing (``fcntl.ioctl`` on a mutable ctypes buffer: measured
faster than a ctypes call into libc's ``ioctl``).  Unit tests inject a fake backend that
records the bytes of every call.  ``Channel.call`` is the one place an ioctl is issued
and the one place an ``OSError`` becomes an ``IoctlError``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from typing import Any, Protocol, Self

from harness.driver.errors import IoctlError, describe


class Backend(Protocol):
    """The syscalls the driver makes; every method raises ``OSError`` on failure."""

    def open(self, path: str, flags: int) -> int: ...

    def close(self, fd: int) -> None: ...

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        """``arg`` is an int (passed by value) or a writable buffer (passed by address)."""
        ...

    def read(self, fd: int, count: int) -> bytes: ...

    def write(self, fd: int, data: bytes) -> int: ...

    def pread(self, fd: int, count: int, offset: int) -> bytes: ...

    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...

    def mmap(self, fd: int, length: int, offset: int, prot: int) -> mmap.mmap: ...


class OsBackend:
    """Real syscalls (``fcntl.ioctl`` mutates a buffer argument in place by default)."""

    open = staticmethod(os.open)
    close = staticmethod(os.close)
    ioctl = staticmethod(fcntl.ioctl)
    read = staticmethod(os.read)
    write = staticmethod(os.write)
    pread = staticmethod(os.pread)
    pwrite = staticmethod(os.pwrite)

    @staticmethod
    def mmap(fd: int, length: int, offset: int, prot: int) -> mmap.mmap:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=prot, offset=offset)


OS = OsBackend()

_REPR_LIMIT = 400


def clip(text: str) -> str:
    """``text`` cut to what an error message shows of an argument."""
    return text if len(text) <= _REPR_LIMIT else text[:_REPR_LIMIT] + "...)"


def _short(arg: object) -> str:
    return clip(describe(arg))


class Shown(Protocol):
    """How a packed command reads in an error message (``harness.driver.layout.Layout``)."""

    def show(self, buf: bytes | bytearray) -> str: ...


class Closing:
    """Mixin for what owns an fd or a mapping: ``with obj:`` closes it, whatever happened."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Channel:
    """An open fd and the backend that reaches it."""

    __slots__ = ("_ioctl", "backend", "fd", "label")

    def __init__(self, fd: int, backend: Backend, label: str) -> None:
        self.fd = fd
        self.backend = backend
        self.label = label
        self._ioctl = backend.ioctl

    def call(self, name: str, request: int, arg: Any) -> int:
        """Issue one ioctl; the kernel's refusal becomes ``IoctlError(name, errno, args)``."""
        try:
            return self._ioctl(self.fd, request, arg)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, _short(arg)) from None

    def call_buf(self, name: str, request: int, buf: bytearray, shown: Shown) -> int:
        """``call`` with a command packed into ``buf``; an error shows it as ``shown`` reads it."""
        try:
            return self._ioctl(self.fd, request, buf)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, clip(shown.show(buf))) from None

    def read(self, name: str, count: int) -> bytes:
        try:
            return self.backend.read(self.fd, count)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, f"count={count}") from None

    def write(self, name: str, data: bytes) -> int:
        try:
            return self.backend.write(self.fd, data)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, describe(data)) from None

    def pread(self, name: str, count: int, offset: int) -> bytes:
        try:
            return self.backend.pread(self.fd, count, offset)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, f"count={count} offset={offset:#x}") from None

    def pwrite(self, name: str, data: bytes, offset: int) -> int:
        try:
            return self.backend.pwrite(self.fd, data, offset)
        except OSError as exc:
            raise IoctlError(name, exc.errno or 0, f"{describe(data)} offset={offset:#x}") from None

    def mmap(self, name: str, length: int, offset: int, prot: int) -> mmap.mmap:
        try:
            return self.backend.mmap(self.fd, length, offset, prot)
        except OSError as exc:
            raise IoctlError(
                name, exc.errno or 0, f"length={length:#x} offset={offset:#x}"
            ) from None

    def close(self) -> None:
        """Close the fd once; later calls do nothing."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.backend.close(fd)


def open_channel(path: str, flags: int, backend: Backend | None, label: str) -> Channel:
    """Open ``path``; a refusal is an ``IoctlError`` naming ``open(path)``."""
    be = backend or OS
    try:
        fd = be.open(path, flags)
    except OSError as exc:
        raise IoctlError(f"open({path})", exc.errno or 0, f"flags={flags:#x}") from None
    return Channel(fd, be, label)
