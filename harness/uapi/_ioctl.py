"""ioctl numbers computed as the kernel's asm-generic ``_IO/_IOR/_IOW/_IOWR`` macros do.

x86_64 and arm64 both use the generic encoding: 8 bits nr, 8 bits type, 14 bits size,
2 bits direction.
"""

import ctypes
from typing import Any

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl size {size} does not fit in {_IOC_SIZEBITS} bits")
    if not 0 <= nr < (1 << _IOC_NRBITS) or not 0 <= type_ < (1 << _IOC_TYPEBITS):
        raise ValueError(f"ioctl type {type_:#x} / nr {nr:#x} out of range")
    return (
        (direction << _IOC_DIRSHIFT)
        | (type_ << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, argtype: Any) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(argtype))


def _IOW(type_: int, nr: int, argtype: Any) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(argtype))


def _IOWR(type_: int, nr: int, argtype: Any) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(argtype))
