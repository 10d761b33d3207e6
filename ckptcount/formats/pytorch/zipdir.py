"""The zip container of a torch file, read from exact ranges: the end-of-central-directory records (ZIP64 included),
the central directory's entries, and one small entry's local header and bytes (``data.pkl``).

``zipfile.ZipFile`` wants a seekable file object and reads the central directory through it; over HTTP that means a
custom file wrapper whose read sizes we do not control, and it trusts ZIP64 sizes and counts as given. Here the
reader asks a :class:`~ckptcount.formats.safetensors.ByteSource` for exact ranges: the tail (end-of-central-directory
records, and for small files the whole directory), the central directory if the tail did not hold it, then the local
header and bytes of ``data.pkl``: two or three reads. Every size, count and offset is checked against the file size
and against caps before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from ...errors import TorchFileError
from .values import _q

MAX_CENTRAL_DIRECTORY = 64 * 1024 * 1024  # ~800k entries; real torch files hold one entry per storage
MAX_ENTRIES = 1_000_000
TAIL_READ = 8192  # first read from the end: EOCD (+ ZIP64 records) and, for small files, the central directory
LOCAL_EXTRA_GUESS = 128  # torch pads local headers to 64-byte alignment; read this much beyond the name at once


@dataclass(frozen=True)
class Entry:
    name: str
    method: int
    flags: int
    csize: int
    usize: int
    offset: int  # of the local header


class RangeReader:
    """Range reads over a ByteSource, remembering the tail so ranges inside it cost nothing."""

    def __init__(self, source, where: str):
        self.source = source
        self.where = where
        size = source.size()
        if size is None:
            raise TorchFileError(where, "file size unknown: cannot find the zip central directory")
        self.size = size
        self.tail_at = 0
        self.tail = b""
        self.bytes_read = 0
        self.reads = 0

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TorchFileError(self.where, f"zip points at bytes [{offset}, {offset + length}) outside the {self.size}-byte file")
        if offset >= self.tail_at and offset + length <= self.tail_at + len(self.tail):
            return self.tail[offset - self.tail_at : offset - self.tail_at + length]
        buf = self.source.read(offset, length)
        self.reads += 1
        self.bytes_read += len(buf)
        if len(buf) != length:
            raise TorchFileError(self.where, f"file ended after {len(buf)} of {length} bytes at offset {offset}")
        return buf

    def read_tail(self, length: int) -> bytes:
        length = min(length, self.size)
        buf = self.read(self.size - length, length)
        self.tail_at, self.tail = self.size - length, buf
        return buf


def _find_eocd(r: RangeReader) -> tuple[int, bytes]:
    """Offset and bytes of the end-of-central-directory record; ``None`` offset when the file is not a zip."""
    # torch (miniz) never writes an archive comment, so the record sits at the very end; a comment of up to
    # TAIL_READ - 22 bytes is still found. A zip whose end record is not in the tail is not a torch file.
    tail = r.read_tail(TAIL_READ)
    pos = len(tail)
    while True:
        pos = tail.rfind(b"PK\x05\x06", 0, pos)
        if pos < 0:
            return -1, b""
        if pos + 22 <= len(tail):
            (comment,) = struct.unpack("<H", tail[pos + 20 : pos + 22])
            if pos + 22 + comment == len(tail):
                return r.tail_at + pos, tail[pos : pos + 22]


def central_directory(r: RangeReader) -> list[Entry]:
    where = r.where
    eocd_at, eocd = _find_eocd(r)
    if eocd_at < 0:
        raise NotZip()
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = struct.unpack("<IHHHHIIH", eocd)
    end_of_cd = eocd_at
    if eocd_at >= 20 and r.read(eocd_at - 20, 4) == b"PK\x06\x07":  # ZIP64 locator
        _, z_disk, z64_at, z_disks = struct.unpack("<IIQI", r.read(eocd_at - 20, 20))
        if z64_at + 56 > eocd_at - 20:
            raise TorchFileError(where, f"ZIP64 end record offset {z64_at} does not lie before its locator")
        z = r.read(z64_at, 56)
        if z[:4] != b"PK\x06\x06":
            raise TorchFileError(where, f"no ZIP64 end record at offset {z64_at}")
        (_, rec_size, _, _, disk, cd_disk, n_disk, n_total64, cd_size64, cd_offset64) = struct.unpack("<IQHHIIQQQQ", z)
        for small, big, what in ((n_total, n_total64, "entry count"), (cd_size, cd_size64, "directory size"), (cd_offset, cd_offset64, "directory offset")):
            if small not in (0xFFFF, 0xFFFFFFFF) and small != big:
                raise TorchFileError(where, f"ZIP64 {what} {big} disagrees with the end record's {small}")
        n_total, cd_size, cd_offset, end_of_cd = n_total64, cd_size64, cd_offset64, z64_at
        n_disk = n_total if n_disk == 0xFFFF else n_disk
    elif 0xFFFFFFFF in (cd_size, cd_offset) or n_total == 0xFFFF:
        raise TorchFileError(where, "end record says ZIP64 but the file has no ZIP64 locator")
    if disk or cd_disk or n_disk != n_total:
        raise TorchFileError(where, "multi-disk zip archives are not supported")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise TorchFileError(where, f"central directory is {cd_size} bytes, over the {MAX_CENTRAL_DIRECTORY}-byte limit")
    if n_total > MAX_ENTRIES or n_total * 46 > cd_size:
        raise TorchFileError(where, f"central directory of {cd_size} bytes cannot hold {n_total} entries")
    if cd_offset + cd_size != end_of_cd:
        raise TorchFileError(where, f"central directory [{cd_offset}, {cd_offset + cd_size}) does not end where its end record starts ({end_of_cd}): truncated or prefixed zip")
    cd = r.read(cd_offset, cd_size)
    entries, pos, names = [], 0, set()
    for i in range(n_total):
        if pos + 46 > len(cd) or cd[pos : pos + 4] != b"PK\x01\x02":
            raise TorchFileError(where, f"central directory entry {i} of {n_total} is missing or corrupt (truncated central directory)")
        (flags, method, _, _, _, csize, usize, nlen, elen, clen, _, _, _, offset) = struct.unpack("<8xHHHHIIIHHHHHII", cd[pos : pos + 46])
        if pos + 46 + nlen + elen + clen > len(cd):
            raise TorchFileError(where, f"central directory entry {i} runs past the directory (truncated central directory)")
        raw = cd[pos + 46 : pos + 46 + nlen]
        extra = cd[pos + 46 + nlen : pos + 46 + nlen + elen]
        pos += 46 + nlen + elen + clen
        name = raw.decode("utf-8", errors="replace") if flags & 0x800 or raw.isascii() else raw.decode("cp437")
        usize, csize, offset = _zip64_extra(extra, usize, csize, offset, name, where)
        if not name or name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("..", ".") for p in name.split("/")) or ":" in name.split("/")[0]:
            raise TorchFileError(where, f"zip entry {_q(name)} is not a plain relative path")
        if name in names:
            raise TorchFileError(where, f"zip entry {_q(name)} appears twice")
        if flags & 0x1:
            raise TorchFileError(where, f"zip entry {_q(name)} is encrypted")
        if offset + 30 > cd_offset or csize > cd_offset:
            raise TorchFileError(where, f"zip entry {_q(name)} lies outside the data area (offset {offset}, {csize} bytes)")
        names.add(name)
        entries.append(Entry(name, method, flags, csize, usize, offset))
    if pos != len(cd):
        raise TorchFileError(where, f"central directory holds {len(cd) - pos} bytes after its {n_total} entries")
    return entries


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int, name: str, where: str) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos : pos + 4])
        body = extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
        if tag != 0x0001:
            continue
        vals, i = [], 0
        for v in (usize, csize, offset):
            if v == 0xFFFFFFFF:
                if i + 8 > len(body):
                    raise TorchFileError(where, f"zip entry {_q(name)} has a short ZIP64 extra field")
                vals.append(struct.unpack("<Q", body[i : i + 8])[0])
                i += 8
            else:
                vals.append(v)
        return vals[0], vals[1], vals[2]
    if 0xFFFFFFFF in (usize, csize, offset):
        raise TorchFileError(where, f"zip entry {_q(name)} needs a ZIP64 extra field and has none")
    return usize, csize, offset


class NotZip(Exception):
    pass


def read_entry(r: RangeReader, e: Entry, limit: int) -> bytes:
    """The bytes of one (small) entry: its local header and data in one read when the guess holds."""
    where = r.where
    if e.usize > limit or e.csize > limit:
        raise TorchFileError(where, f"{_q(e.name)} is {max(e.usize, e.csize)} bytes, over the {limit}-byte limit")
    want = min(30 + len(e.name.encode()) + LOCAL_EXTRA_GUESS + e.csize, r.size - e.offset)
    buf = r.read(e.offset, want)
    if len(buf) < 30 or buf[:4] != b"PK\x03\x04":
        raise TorchFileError(where, f"no local header for {_q(e.name)} at offset {e.offset}")
    nlen, elen = struct.unpack("<HH", buf[26:30])
    start = 30 + nlen + elen
    local_name = buf[30 : 30 + nlen] if len(buf) >= 30 + nlen else r.read(e.offset + 30, nlen)
    if local_name.decode("utf-8", errors="replace") != e.name and local_name.decode("cp437") != e.name:
        raise TorchFileError(where, f"local header names {_q(local_name.decode('utf-8', errors='replace'))}, central directory {_q(e.name)}")
    if len(buf) >= start + e.csize:
        raw = buf[start : start + e.csize]
    else:
        raw = r.read(e.offset + start, e.csize)
    if e.method == 0:
        if e.csize != e.usize:
            raise TorchFileError(where, f"stored entry {_q(e.name)} declares {e.csize} bytes stored but {e.usize} uncompressed")
        return raw
    if e.method == 8:  # deflate, bounded: never inflate past the declared size
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(raw, e.usize + 1)
        except zlib.error as err:
            raise TorchFileError(where, f"{_q(e.name)} is not valid deflate data ({err})") from None
        if len(out) != e.usize:
            raise TorchFileError(where, f"{_q(e.name)} inflates to more or less than its declared {e.usize} bytes")
        return out
    raise TorchFileError(where, f"{_q(e.name)} uses zip compression method {e.method}, which torch never writes")
