"""Where a tensor's bytes are, and reading them: local files with ``os.preadv`` straight into a block, Hub files by one
HTTP range request per read.

A checkpoint's files are opened where its headers were read (:func:`opener`): locally, from huggingface_hub's copy
(offline), or on the Hub at the commit read. :func:`data_offset` turns a reader's records into the absolute offset of a
tensor's bytes for each format (safetensors, PyTorch zip and legacy, GGUF).
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import CkptError, ReadError
from ..formats.safetensors import ByteSource
from ..records import FileRecord, TensorRecord
from ..sources.files import LocalFile, cache_snapshot, inside

READ_CHUNK = 8 * 1024 * 1024  # one read request at most this long (parallel requests for remote sources)

Opener = Callable[[str], ByteSource]  # a file's name in its checkpoint -> a source of its bytes


@dataclass(frozen=True)
class Located:
    """A stored tensor and where its bytes are: ``source.read(offset, tensor.nbytes)``."""

    tensor: TensorRecord
    source: ByteSource
    offset: int


_count_lock = threading.Lock()
_PREADV = hasattr(os, "preadv")


def _read_into(source: ByteSource, offset: int, view: memoryview) -> int:
    """Fill ``view`` with ``len(view)`` bytes of ``source`` from ``offset``.

    A local file is read with ``os.preadv`` straight into ``view`` (no intermediate ``bytes``) and its ``bytes_read``
    counter advanced; any other source through ``source.read`` (one request), copied in. A short read is an error.
    """
    n = len(view)
    if isinstance(source, LocalFile):
        got = 0
        try:
            fd = os.open(source.path, os.O_RDONLY)
            try:
                while got < n:
                    if _PREADV:
                        k = os.preadv(fd, [view[got:]], offset + got)
                    else:  # no preadv (some platforms): a temporary bytes, copied in
                        data = os.pread(fd, min(n - got, READ_CHUNK), offset + got)
                        k = len(data)
                        view[got : got + k] = data
                    if k == 0:
                        break
                    got += k
            finally:
                os.close(fd)
        except OSError as e:
            raise ReadError(source.name, e.strerror or str(e)) from None
        with _count_lock:
            source.bytes_read += got
            source.reads += 1
    else:
        data = source.read(offset, n)
        got = min(len(data), n)
        view[:got] = data[:got]
        del data
    if got != n:
        raise ReadError(source.name, f"file ended after {got} of {n} bytes at offset {offset}")
    return n


def local_opener(target: str) -> Opener:
    """Open the files of a local target by the names its FileRecords carry; one LocalFile per file, reused."""
    path = Path(target)
    if path.is_dir() and (snapshot := cache_snapshot(path, target)) is not None:
        path = snapshot  # a repo folder of the Hugging Face cache: the snapshot that load_local counted
    root = path if path.is_dir() else path.parent
    opened: dict[str, LocalFile] = {}

    def open_file(name: str) -> LocalFile:
        if name not in opened:
            file_path = root / name if not path.is_dir() and name == path.name else inside(root, name, target)
            opened[name] = LocalFile(file_path, str(root / name) if path.is_dir() else target)
        return opened[name]

    open_file.opened = opened  # type: ignore[attr-defined]  # tests read the byte counts
    return open_file


class RangeSource:
    """A Hub file read with one HTTP range request per read, nothing cached: memory stays one block.

    Requests go through :class:`ckptcount.sources.http.HubClient` (its retries, error mapping, and the stop after the
    bytes asked for when a server ignores Range); after a redirect to a CDN, later reads go straight there. Thread-safe:
    the verifier reads chunks in parallel.
    """

    def __init__(self, client, url: str, where: str, size: int | None):
        import threading

        self.client, self.url, self.name, self._size = client, url, where, size
        self._location: str | None = None
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.requests = 0

    def size(self) -> int | None:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        span = (offset, offset + length)
        url = self._location or self.url
        try:
            reply = self.client.get(url, self.name, byte_range=span, keep=span)
        except CkptError:
            if self._location is None:
                raise
            self._location = None  # a signed CDN URL may have expired: go back through the Hub once
            reply = self.client.get(self.url, self.name, byte_range=span, keep=span)
        if reply.url != url and reply.status == 206:
            self._location = reply.url
        body = reply.body[:length]
        with self._lock:
            self.bytes_read += len(body)
            self.requests += 1
        return body


def hub_opener(checkpoint, token: str | None = None) -> Opener:
    """Open the files of a Hub target (``Checkpoint.origin``) at the commit its headers were read from."""
    from urllib.parse import quote

    from ..sources.http import HubClient
    from ..targets.hub_target import names_file as _is_file

    o = checkpoint.origin
    path = o.get("path") or ""
    folder = path.rsplit("/", 1)[0] if _is_file(path) and "/" in path else ("" if _is_file(path) else path.strip("/"))
    rev = o.get("sha") or o.get("revision") or "main"
    client = HubClient(o["endpoint"], token)
    sizes = {f.path: f.size for f in checkpoint.files}
    opened: dict[str, RangeSource] = {}

    def open_file(name: str) -> RangeSource:
        if name not in opened:
            full = f"{folder}/{name}" if folder else name
            url = f"{o['endpoint'].rstrip('/')}/{o['repo']}/resolve/{quote(rev, safe='')}/{quote(full)}"
            opened[name] = RangeSource(client, url, f"{o['repo']}/{full}", sizes.get(name))
        return opened[name]

    open_file.opened = opened  # type: ignore[attr-defined]
    open_file.client = client  # type: ignore[attr-defined]
    return open_file


def opener(checkpoint, token: str | None = None) -> Opener:
    """Open the files of a checkpoint where its headers were read: locally, from the copy huggingface_hub downloaded
    (offline), or on the Hub at the commit read."""
    origin = getattr(checkpoint, "origin", None) or {}
    if origin.get("local_copy"):  # offline, counted from huggingface_hub's downloaded copy: read it there
        return local_opener(origin["local_copy"])
    return hub_opener(checkpoint, token) if origin else local_opener(checkpoint.target)


def locate_tensor(f: FileRecord, t: TensorRecord, open_source: Opener) -> Located | str:
    """Where ``t``'s bytes are in its file ``f`` (:func:`data_offset`), opened with ``open_source``; or why they
    cannot be read."""
    source = open_source(t.file) if not f.header_only and f.format != "safetensors" and f.storages else None
    where = data_offset(f, t, source)
    if isinstance(where, str):
        return where
    return Located(t, source or open_source(t.file), where)


def data_offset(f: FileRecord, t: TensorRecord, source: ByteSource | None = None) -> int | str:
    """Absolute offset of ``t``'s bytes in its file, or why they cannot be read.

    Safetensors: after the header. GGUF: the data section's start plus the tensor's offset. PyTorch files: a tensor
    is read when it is one row-major run of its storage (``FileRecord.strided`` lists the others: a transposed view, a
    slice with a step); in a legacy file at the offset the reader computed, in a zip from its storage's stored entry,
    whose local header is read from ``source`` (30 bytes: where the data starts depends on the header's own name and
    extra-field lengths)."""
    if f.header_only:
        return f"{f.path} holds only its header: no tensor data to verify"
    if f.format == "safetensors":
        return 8 + f.header_bytes + t.begin
    if f.format in ("pytorch", "pytorch-legacy"):
        if t.name in f.strided:
            return f"{t.name} is a strided view of its storage (a transpose or a step): not read"
        where = f.storages.get(t.storage)
        if where is None:
            return f"{t.name}: storage {t.storage!r} is not a stored (uncompressed) zip entry of its size: not read"
        kind, offset = where
        if kind == "at":
            return offset + t.begin
        if source is None:
            return f"{t.name}: no source to read its storage's zip entry from"
        head = source.read(offset, 30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise ReadError(f.path, f"no zip local header for storage {t.storage!r} at offset {offset}")
        nlen, elen = struct.unpack("<HH", head[26:30])
        start = offset + 30 + nlen + elen + t.begin
        size = source.size()
        if size is not None and start + t.nbytes > size:
            raise ReadError(f.path, f"storage {t.storage!r} of {t.name!r} runs past the end of the file")
        return start
    if f.format == "gguf" and "data" in f.storages:  # row-major (the reader reverses ggml's dims); quantized types are
        return f.storages["data"][1] + t.begin  # refused by compare(), by dtype
    return f"reading {f.format} tensor data is not supported by --verify-ties"
