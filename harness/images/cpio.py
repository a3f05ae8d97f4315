"""Uncompressed ``newc`` cpio archives, the format the kernel unpacks as its initramfs.

Written here rather than with cpio(1) so the archive does not depend on the builder's
uid mapping, needs no device nodes on disk, and lists entries in a stable order.  A tree
unpacked by an ordinary user from a tarball is archived with the tarball's owners and
modes (:class:`Recorded`), not the unpacking user's.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_SIZE = 110
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One archive member: ``name`` is relative (``dev/console``), no leading slash."""

    name: str
    mode: int
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes = b""
    source: Path | None = None
    size: int | None = None
    rdev_major: int = 0
    rdev_minor: int = 0


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, inode: int, size: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        inode,
        entry.mode,
        entry.uid,
        entry.gid,
        nlink,
        entry.mtime,
        size,
        0,
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name),
        0,
    )
    header = MAGIC + b"".join(b"%08X" % field for field in fields) + name
    return header + _pad(len(header))


class Writer:
    """Streams entries into a newc archive; :meth:`close` writes the trailer."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._inode = 0
        self.names: set[str] = set()

    def add(self, entry: Entry) -> None:
        """Append one entry (file data from ``entry.data`` or ``entry.source``)."""
        self._inode += 1
        size = entry.size if entry.size is not None else len(entry.data)
        self._stream.write(_header(entry, self._inode, size))
        if entry.source is not None and stat.S_ISREG(entry.mode):
            written = 0
            with entry.source.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    self._stream.write(chunk)
                    written += len(chunk)
            if written != size:
                raise OSError(f"{entry.source}: size changed while archiving")
        else:
            self._stream.write(entry.data)
        self._stream.write(_pad(size))
        self.names.add(entry.name)

    def close(self) -> None:
        """Write the trailer entry that ends the archive."""
        self._inode += 1
        self._stream.write(_header(Entry(TRAILER, 0), 0, 0))


@dataclass(frozen=True)
class Recorded:
    """Owner and mode a tree's file really has, kept aside when the file was unpacked.

    ``mode`` is the full ``st_mode`` from the tarball; ``unpacked`` the permission bits the
    file got on disk. A file whose bits on disk still equal ``unpacked`` is archived with
    ``mode``; one changed since (by a later step) with its bits on disk.
    """

    uid: int
    gid: int
    mode: int
    unpacked: int


def tree_entries(root: Path, recorded: Mapping[str, Recorded] | None = None) -> Iterator[Entry]:
    """Entries for everything under ``root``, parents before children, names sorted.

    Without ``recorded``, owners and modes are the files' own. With it, a file listed there
    (same type) gets its recorded owner and mode, and any other file root's (0:0): the tree
    was unpacked by an ordinary user and everything added to it since belongs to root.
    """
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        relative = os.path.relpath(directory, root)
        prefix = "" if relative == "." else relative + "/"
        for name in sorted(dirs + files):
            path = Path(directory) / name
            info = path.lstat()
            mode, uid, gid = info.st_mode, info.st_uid, info.st_gid
            if recorded is not None:
                uid = gid = 0
                known = recorded.get(prefix + name)
                if known is not None and stat.S_IFMT(known.mode) == stat.S_IFMT(mode):
                    uid, gid = known.uid, known.gid
                    if stat.S_IMODE(mode) == known.unpacked:
                        mode = known.mode
            base = Entry(prefix + name, mode, uid=uid, gid=gid, mtime=int(info.st_mtime))
            if stat.S_ISREG(mode):
                yield replace(base, source=path, size=info.st_size)
            elif stat.S_ISLNK(mode):
                yield replace(base, data=os.readlink(path).encode())
            elif stat.S_ISDIR(mode):
                yield base
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                rdev = info.st_rdev
                yield replace(base, rdev_major=os.major(rdev), rdev_minor=os.minor(rdev))
            # sockets are left out: nothing can use them from an archive


def write_archive(
    root: Path,
    output: Path,
    extra: Iterable[Entry] = (),
    recorded: Mapping[str, Recorded] | None = None,
) -> int:
    """Archive the tree at ``root`` plus ``extra`` entries not already in it; returns bytes.

    ``recorded``: owners and modes of an unpacked tarball (see :func:`tree_entries`).
    """
    with output.open("wb") as stream:
        writer = Writer(stream)
        for entry in tree_entries(root, recorded):
            writer.add(entry)
        for entry in extra:
            if entry.name not in writer.names:
                writer.add(entry)
        writer.close()
        return stream.tell()


def write_files(files: Mapping[str, bytes], stream: BinaryIO) -> None:
    """A small archive of regular files (0644), their parent directories listed first.

    For example the early cpio of ACPI table overrides (``kernel/firmware/acpi/IORT.aml``)
    that, concatenated in front of the initramfs, replaces firmware tables at boot.
    """
    writer = Writer(stream)
    for name in sorted(files):
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in writer.names:
                writer.add(Entry(parent, stat.S_IFDIR | 0o755))
        writer.add(Entry("/".join(parts), stat.S_IFREG | 0o644, data=files[name]))
    writer.close()


@dataclass(frozen=True)
class Member:
    """An entry read back from an archive (for checks and tests)."""

    name: str
    mode: int
    uid: int
    gid: int
    rdev_major: int
    rdev_minor: int
    data: bytes


def read_archive(stream: BinaryIO) -> Iterator[Member]:
    """Parse a newc archive (stops at the trailer); ValueError on anything malformed."""
    while True:
        header = stream.read(_HEADER_SIZE)
        if len(header) < _HEADER_SIZE or header[:6] != MAGIC:
            raise ValueError(f"bad cpio header at offset {stream.tell() - len(header)}")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, uid, gid, size, rdev_major, rdev_minor, name_size = (
            fields[1],
            fields[2],
            fields[3],
            fields[6],
            fields[9],
            fields[10],
            fields[11],
        )
        name = stream.read(name_size)[:-1].decode()
        stream.read(-(_HEADER_SIZE + name_size) % 4)
        if name == TRAILER:
            return
        data = stream.read(size)
        stream.read(-size % 4)
        yield Member(name, mode, uid, gid, rdev_major, rdev_minor, data)
