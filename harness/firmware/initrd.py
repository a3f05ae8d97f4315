"""Initrds that carry ACPI table upgrades: an uncompressed cpio in front of the initramfs.

Linux's ACPI_TABLE_UPGRADE (Documentation/admin-guide/acpi/initrd_table_override.rst)
looks for ``kernel/firmware/acpi/*`` in an uncompressed cpio at the start of the initrd;
the initramfs proper follows it and is unpacked as usual.  Combined initrds are written
to a cache directory under a name derived from their content, so every machine that
needs the same tables in front of the same initramfs shares one file.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from harness.errors import ConfigError, DecodeError
from harness.images.cpio import read_archive, write_files

ACPI_DIR = "kernel/firmware/acpi"
MAX_TABLES = 64
"""NR_ACPI_INITRD_TABLES."""


def early_cpio(tables: Mapping[str, bytes]) -> bytes:
    """The uncompressed newc archive holding ``tables`` (file name -> table bytes)."""
    if not tables:
        raise ConfigError("early cpio: no ACPI tables given")
    if len(tables) > MAX_TABLES:
        raise ConfigError(f"early cpio: {len(tables)} tables, the kernel reads at most 64")
    files = {}
    for name, data in tables.items():
        if "/" in name or not name:
            raise ConfigError(f"early cpio: table file name {name!r} must be a plain name")
        files[f"{ACPI_DIR}/{name}"] = bytes(data)
    stream = io.BytesIO()
    write_files(files, stream)
    return stream.getvalue()


def tables_in_initrd(path: Path) -> dict[str, bytes]:
    """The ACPI tables of the cpio an initrd starts with (empty if it has none)."""
    with path.open("rb") as stream:
        try:
            members = list(read_archive(stream))
        except ValueError as exc:
            raise DecodeError("initrd", f"{path}: not a newc cpio at its start ({exc})") from None
    prefix = ACPI_DIR + "/"
    return {
        member.name.removeprefix(prefix): member.data
        for member in members
        if member.name.startswith(prefix) and member.data
    }


def _identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def combined_initrd_key(initramfs: Path, tables: Mapping[str, bytes]) -> str:
    """The cache name of ``tables`` in front of ``initramfs`` (its path, size and mtime)."""
    digest = hashlib.sha256(early_cpio(tables))
    digest.update(_identity(initramfs).encode())
    return digest.hexdigest()[:24]


KEEP_COMBINED = 4
"""Combined initrds kept per cache directory (each is a full copy of an initramfs)."""


def prune(cache_dir: Path, keep: int = KEEP_COMBINED) -> list[Path]:
    """Remove all but the ``keep`` most recently used combined initrds; returns the removed."""
    found = sorted(cache_dir.glob("initrd-*.cpio"), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = found[keep:]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def prepend_tables(initramfs: Path, tables: Mapping[str, bytes], cache_dir: Path) -> Path:
    """``cache_dir/<key>.cpio``: the early cpio of ``tables`` followed by ``initramfs``.

    A cached file is reused (and marked used); writing a new one prunes the oldest.
    """
    key = combined_initrd_key(initramfs, tables)
    target = cache_dir / f"initrd-{key}.cpio"
    if target.exists():
        os.utime(target)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out, initramfs.open("rb") as source:
            out.write(early_cpio(tables))
            shutil.copyfileobj(source, out, 1 << 20)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    prune(cache_dir)
    return target
