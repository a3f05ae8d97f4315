"""Command layouts precomputed from the uAPI ctypes structures, for the driver's hot paths.

Building a ctypes structure costs about a microsecond per call in CPython (several under
TCG); ``struct.Struct.pack`` of the same fields into a ``bytearray`` costs a fifth of
that.  ``layout(ctype)`` derives the ``struct`` format from the ctypes fields themselves
(offsets, sizes and padding), so the two cannot drift, and checks the sizes agree.
Arrays and nested structures inside a command are treated as reserved bytes (zero).
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Layout(struct.Struct):
    """``struct.Struct`` of a uAPI command, knowing the ctypes type it mirrors."""

    ctype: Any
    names: tuple[str, ...]

    def offset(self, name: str) -> int:
        """Byte offset of field ``name`` in the command."""
        return int(getattr(self.ctype, name).offset)

    def show(self, buf: bytes | bytearray) -> str:
        """``repr`` of ``buf`` read as the ctypes structure (for error messages)."""
        return repr(self.ctype.from_buffer_copy(bytes(buf)))


def layout(ctype: Any) -> Layout:
    """The ``struct`` layout of ``ctype`` (native order, its own padding); its scalars in order.

    ``Layout.pack(*values)`` takes one value per scalar field (``names``), in field order.
    """
    fmt = "="
    names: list[str] = []
    position = 0
    for field in ctype._fields_:
        name, ftype = field[0], field[1]
        descriptor = getattr(ctype, name)
        if descriptor.offset > position:
            fmt += f"{descriptor.offset - position}x"
        size = ctypes.sizeof(ftype)
        code = getattr(ftype, "_type_", None)
        if isinstance(code, str):
            if code not in "bBhHiIlLqQ" or size not in _CODES:
                raise TypeError(f"{ctype.__name__}.{name}: no struct code for {ftype.__name__}")
            fmt += _CODES[size] if code.isupper() else _CODES[size].lower()
            names.append(name)
        else:  # arrays, nested structures: reserved bytes the driver leaves zero
            fmt += f"{size}x"
        position = descriptor.offset + size
    total = ctypes.sizeof(ctype)
    if total > position:
        fmt += f"{total - position}x"
    packed = Layout(fmt)
    if packed.size != total:
        raise TypeError(f"{ctype.__name__}: layout {fmt!r} is {packed.size} bytes, not {total}")
    packed.ctype = ctype
    packed.names = tuple(names)
    return packed


U32 = struct.Struct("=I")
"""One native ``__u32`` (for reading an out field at its offset)."""
