"""Local byte sources: a regular file read with positioned reads, counting every byte it hands out.

Only regular files are opened (a FIFO, a device or a directory named as a shard is refused before open), and
:func:`inside` keeps every path that came from a checkpoint's own files (index entries, symlinks) within its folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ReadError, TargetNotFound, UnsafePath


def inside(root: Path, name: str, where: str, real_root: Path | None = None) -> Path:
    """Resolve ``name`` (from an index or a listing) under ``root``; refuse anything that leaves it, symlinks included.

    ``real_root``: ``root.resolve()``, when the caller checks many names under one root."""
    if not name or os.path.isabs(name) or "\\" in name or "\x00" in name:
        raise UnsafePath(where, f"path {name!r} is not a plain relative path")
    if any(part == ".." for part in Path(name).parts):
        raise UnsafePath(where, f"path {name!r} leaves the checkpoint directory")
    real_root = real_root or root.resolve()
    path = (root / name).resolve()
    if path != real_root and real_root not in path.parents:
        raise UnsafePath(where, f"path {name!r} resolves outside the checkpoint directory")
    return path


class LocalFile:
    """A regular file. ``bytes_read`` counts what was read, so tests can prove only headers were touched."""

    def __init__(self, path: Path, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise TargetNotFound(self.name, "no such file") from None
        except OSError as e:
            raise ReadError(self.name, e.strerror or str(e)) from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(self.name, "not a regular file")
        self._size = st.st_size
        self.bytes_read = 0
        self.reads = 0

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise ReadError(self.name, e.strerror or str(e)) from None
        try:
            chunks = []
            got = 0
            while got < length:
                chunk = os.pread(fd, length - got, offset + got)
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
        except OSError as e:
            raise ReadError(self.name, e.strerror or str(e)) from None
        finally:
            os.close(fd)
        self.bytes_read += got
        self.reads += 1
        return b"".join(chunks)
