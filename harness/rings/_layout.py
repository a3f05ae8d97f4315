"""Precompiled ``struct`` layouts for the hot paths, checked against the ctypes uAPI models."""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterable, Sequence

from harness.errors import HarnessError

Buffer = bytes | bytearray | memoryview


def compiled(cls: type, fields: Sequence[tuple[str, str]]) -> struct.Struct:
    """A little-endian ``struct.Struct`` for ``fields`` that provably matches ``cls``.

    ``fields`` are ``(name, code)`` pairs in memory order; an empty name is padding.  Every
    named field's offset and the total size are compared with the ctypes model, so a drift in
    either side fails at import instead of decoding garbage.
    """
    fmt = "<"
    for name, code in fields:
        if name:
            offset = struct.calcsize(fmt)
            field = getattr(cls, name, None)
            if field is not None and getattr(field, "offset", offset) != offset:
                raise HarnessError(
                    f"{cls.__name__}.{name}: offset {field.offset}, rings expect {offset}"
                )
        fmt += code
    layout = struct.Struct(fmt)
    size = ctypes.sizeof(cls)
    if layout.size != size:
        raise HarnessError(f"{cls.__name__}: sizeof {size}, rings expect {layout.size}")
    return layout


def as_buffer(records: Buffer | Iterable[object]) -> Buffer:
    """A read()/write() buffer as is, or decoded uAPI records joined back into one."""
    if isinstance(records, bytes | bytearray | memoryview):
        return records
    return b"".join(bytes(record) for record in records)  # type: ignore[call-overload]
