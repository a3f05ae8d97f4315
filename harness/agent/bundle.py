"""The code shipped into a guest at connect time: a zip of the pure-Python packages.

Shipping code (rather than baking it into images) means changing the harness never
requires rebuilding an image.  Only standard-library packages go in.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
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
    "harness/scenarios",
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
    """The zip's bytes and a short content hash (deterministic: fixed timestamps, order)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files():
            info = zipfile.ZipInfo(str(path.relative_to(ROOT)), date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:16]
