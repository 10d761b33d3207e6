"""Local byte sources: a regular file read with positioned reads, counting every byte it hands out.

Only regular files are opened (a FIFO, a device or a directory named as a shard is refused before open), and
:func:`inside` keeps every path that came from a checkpoint's own files (index entries, symlinks) within its folder
(for a snapshot in the Hugging Face cache, its folder and the repo's ``blobs/``: :func:`real_roots`).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import ReadError, TargetNotFound, UnsafePath

CACHE_REPO_PREFIX = r"(?:models|datasets|spaces)--"  # how a repo's folder in the Hugging Face cache is named
_CACHE_REPO = re.compile(CACHE_REPO_PREFIX + ".+")
_SHA = re.compile(r"[0-9a-f]{40}")


def entries(folder: Path, where: str) -> list[Path]:
    """What ``folder`` holds; a folder that cannot be listed (permissions) is a :class:`ReadError` naming it."""
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise ReadError(where, f"cannot list the folder: {e.strerror or e}") from None


def real_roots(root: Path) -> tuple[Path, ...]:
    """The real folders that the files of a checkpoint at ``root`` may resolve into.

    ``root`` itself and, when ``root`` is a snapshot in the Hugging Face cache (or a folder inside one), that repo's
    ``blobs/`` folder: ``hf download`` and ``from_pretrained`` lay a snapshot out as
    ``<cache>/models--org--name/snapshots/<commit>/model-00001-of-00002.safetensors -> ../../blobs/<hash>``, so every
    file of a downloaded sharded model resolves there. The layout is huggingface_hub's (``file_download``); it is
    matched by folder names here, not through huggingface_hub, whose import costs ~0.15 s on a path that imports
    nothing else. Only a real ``blobs`` folder counts, not a symlink: a crafted tree with ``blobs -> /`` gains nothing.
    """
    real = root.resolve()
    for folder in (real, *real.parents):
        snapshots = folder.parent
        repo = snapshots.parent
        if snapshots.name == "snapshots" and _CACHE_REPO.fullmatch(repo.name):
            blobs = repo / "blobs"
            if blobs.is_dir() and not blobs.is_symlink():
                return real, blobs
            break
    return (real,)


def cache_snapshot(folder: Path, where: str) -> Path | None:
    """The snapshot that a repo folder of the Hugging Face cache (``models--org--name``, holding ``snapshots/``) stands
    for: the commit its ``refs/main`` names, as ``from_pretrained`` would load it offline, else its only snapshot.
    None for any other folder. ``refs/main`` is read as a plain folder name under ``snapshots/`` (:func:`inside`)."""
    snapshots = folder / "snapshots"
    if not (_CACHE_REPO.fullmatch(folder.resolve().name) and snapshots.is_dir()):
        return None
    commit = ref_commit(folder, "main", where)
    if commit is not None:
        snapshot = inside(snapshots, commit, f"{where}/refs/main")
        if not snapshot.is_dir():
            raise TargetNotFound(where, f"refs/main names commit {commit!r}, which has no snapshot here")
        return snapshot
    found = sorted(p.name for p in entries(snapshots, f"{where}/snapshots") if p.is_dir())
    if len(found) != 1:
        raise TargetNotFound(where, f"a Hugging Face cache folder with {len(found)} snapshots and no refs/main; name one: {', '.join(found[:5]) or 'none'}")
    return snapshots / found[0]


def ref_commit(repo: Path, revision: str, where: str) -> str | None:
    """The commit that ``revision`` names in a repo folder of the Hugging Face cache: a commit sha names itself, else
    ``refs/<revision>`` holds it (read bounded: a sha is 40 characters). None when there is no such ref inside
    ``refs/``. The text is untrusted: callers take it as a plain folder name under ``snapshots/`` (:func:`inside`)."""
    if _SHA.fullmatch(revision):
        return revision
    ref = repo / "refs" / revision
    if not (ref.is_file() and (repo / "refs").resolve() in ref.resolve().parents):
        return None
    source = LocalFile(ref, f"{where}/refs/{revision}")
    return source.read(0, min(source.size(), 256)).decode("ascii", "replace").strip()


def inside(root: Path, name: str, where: str, roots: tuple[Path, ...] | None = None) -> Path:
    """Resolve ``name`` (from an index or a listing) under ``root``; refuse anything that leaves it, symlinks included
    (a symlink into the repo's ``blobs/`` of a Hugging Face cache snapshot stays in: :func:`real_roots`).

    ``roots``: ``real_roots(root)``, when the caller checks many names under one root."""
    if not name or os.path.isabs(name) or "\\" in name or "\x00" in name:
        raise UnsafePath(where, f"path {name!r} is not a plain relative path")
    if any(part == ".." for part in Path(name).parts):
        raise UnsafePath(where, f"path {name!r} leaves the checkpoint directory")
    try:
        path = (root / name).resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python 3.11-3.12's "Symlink loop from ..." (3.13: OSError ELOOP)
        raise UnsafePath(where, f"path {name!r} is a symlink loop") from None
    for real_root in roots or real_roots(root):
        if path == real_root or real_root in path.parents:
            return path
    raise UnsafePath(where, f"path {name!r} resolves outside the checkpoint directory")


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
