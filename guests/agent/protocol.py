"""Wire format shared by the host client and the guest server: one JSON object per line.

Request  ``{"id": N, "method": "name", "params": {...}}``
Reply    ``{"id": N, "result": ...}`` or ``{"id": N, "error": {...}}``
Bytes travel as ``{"__b64__": "..."}``.
"""

from __future__ import annotations

import binascii
import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024 * 1024


class ProtocolError(Exception):
    """A line that is not what the protocol says."""


def _default(obj: object) -> object:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"__b64__": binascii.b2a_base64(bytes(obj), newline=False).decode()}
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"cannot send {type(obj).__name__} over the agent protocol")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "__b64__" in obj:
        return binascii.a2b_base64(obj["__b64__"])  # base64's module is slow to import
    return obj


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, default=_default, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; ProtocolError names what is wrong with it."""
    if not line.endswith(b"\n"):
        raise ProtocolError(f"truncated message ({len(line)} bytes, no newline)")
    try:
        message = json.loads(line, object_hook=_hook)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}: {line[:80]!r}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected an object, got {type(message).__name__}")
    return message
