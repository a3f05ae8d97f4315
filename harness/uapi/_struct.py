"""Base classes for uAPI structures: byte conversion with clear errors, readable repr."""

from __future__ import annotations

import ctypes
from typing import Any, ClassVar, Self

from harness.errors import DecodeError


class _Fields:
    """Mixin shared by structures and unions."""

    _fields_: ClassVar[Any]

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Self:
        """Decode ``data``; it must hold at least ``sizeof(cls)`` bytes."""
        size = ctypes.sizeof(cls)  # type: ignore[arg-type]
        if len(data) < size:
            raise DecodeError(cls.__name__, f"need {size} bytes, got {len(data)}")
        return cls.from_buffer_copy(bytes(data[:size]))  # type: ignore[attr-defined,no-any-return]

    def to_bytes(self) -> bytes:
        return bytes(self)  # type: ignore[call-overload,no-any-return]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in self._fields_:
            name = field[0]
            value = getattr(self, name)
            if isinstance(value, _Fields):
                value = value.as_dict()
            elif isinstance(value, ctypes.Array):
                value = list(value)
            out[name] = value
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({body})"


class UapiStruct(_Fields, ctypes.Structure):
    """A kernel uAPI ``struct``; native alignment matches the kernel on x86_64 and arm64."""


class UapiUnion(_Fields, ctypes.Union):
    """A kernel uAPI ``union``."""
