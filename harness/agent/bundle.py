"""The code shipped into a guest at connect time: a zip of the pure-Python packages.

Shipping code (rather than baking it into images) means changing the harness never
requires rebuilding an image.  Only standard-library packages go in.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: packages (relative to the checkout) that run inside guests
SHIPPED = (
    "harness/__init__.py",
    "harness/errors.py",
    "harness/uapi",
    "harness/driver",
    "harness/vtd",
    "harness/smmuv3",
    "harness/pgtable",
    "harness/devices",
    "harness/rings",
    "harness/scenarios/__init__.py",
    "harness/scenarios/guest",  # the host halves never run in a guest
    "guests",
)


def _files() -> list[Path]:
    out: list[Path] = []
    for rel in SHIPPED:
        path = ROOT / rel
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out.extend(sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts))
    return out


@functools.cache
def agent_bundle() -> tuple[bytes, str]:
    """The bundle's bytes and a short content hash (deterministic: fixed order).

    The format is a zlib stream of records ``<path>\n<size>\n<bytes>``: the guest unpacks
    it with ``os`` and ``zlib`` alone, because importing ``zipfile`` and ``hashlib`` costs
    a guest under TCG about 0.3 s of every agent start.
    """
    out = bytearray()
    for path in _files():
        data = path.read_bytes()
        out += f"{path.relative_to(ROOT)}\n{len(data)}\n".encode() + data
    data = zlib.compress(bytes(out), 6)
    return data, hashlib.sha256(data).hexdigest()[:16]


def framed_bundle() -> bytes:
    """What the bootstrap reads on stdin: ``<size> <digest>\n`` then the bundle."""
    data, digest = agent_bundle()
    return f"{len(data)} {digest}\n".encode() + data


def read_bundle(data: bytes) -> dict[str, bytes]:
    """The files of a bundle by relative path (the bootstrap's unpacking, for the host)."""
    files: dict[str, bytes] = {}
    data = zlib.decompress(data)
    pos = 0
    while pos < len(data):
        name_end = data.index(b"\n", pos)
        size_end = data.index(b"\n", name_end + 1)
        size = int(data[name_end + 1 : size_end])
        files[data[pos:name_end].decode()] = data[size_end + 1 : size_end + 1 + size]
        pos = size_end + 1 + size
    return files
