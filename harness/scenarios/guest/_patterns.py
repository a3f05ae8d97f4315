"""Helpers shared by guest halves (a leading underscore: not an agent module)."""

from __future__ import annotations

import hashlib

#: bytes per test DMA: enough to tell pages apart, small enough for a TCG guest
DMA_LENGTH = 256


def pattern(label: str, length: int = DMA_LENGTH) -> bytes:
    """Bytes that differ for every label (so a DMA that hit the wrong page shows)."""
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return out[:length]
