"""A bounded GGUF header parser over any :class:`ByteSource` (local file or HTTP ranges).

Hand-written on purpose: the ``gguf`` package maps the whole file and trusts every count it reads. Here every count
is checked before anything is allocated or read (the checklist follows llama.cpp's ``ggml/src/gguf.cpp``):

* magic ``GGUF``, version 2 or 3 (v1 used 32-bit counts; a byte-swapped version means a big-endian file);
* ``n_tensors`` and ``n_kv`` under fixed caps and small enough to fit in what is left of the file;
* every string length under a cap (tensor names under :data:`MAX_NAME`), valid UTF-8 for keys and names;
* every array's element type known and not an array, its length under a cap and within the file;
* no duplicate keys or tensor names; ``general.alignment`` a power of two;
* each tensor: 0..4 dims, element count without 64-bit overflow, a known ggml type whose block divides the row,
  its data offset exactly where the previous tensor's (padded) data ends; the data ends within the file.

Reads grow only as needed: a first block, then doubling chunks (capped), so a header of H bytes costs about
log2(H / first block) reads. Arrays of fixed-width values (token scores, types) are skipped without being read.

GGUF stores dims innermost first (ggml ``ne``); records carry the reversed, PyTorch-order shape, so ``numel`` is the
logical element count and ``stored_bytes`` the size from the type's block size.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from ..errors import HeaderError, ReadError
from ..records import FileRecord, Finding, TensorRecord
from .base import FileRead

MAGIC = b"GGUF"
MAX_TENSORS = 1_000_000
MAX_KV = 1_000_000
MAX_STRING = 16 * 1024 * 1024  # chat templates are tens of KB; token strings a few bytes
MAX_NAME = 256  # llama.cpp's GGML_MAX_NAME is 64; stay lenient but bounded
MAX_ARRAY = 1 << 27  # 134M elements: vocabularies are ~260K
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_HEADER_BYTES = 512 * 1024 * 1024
FIRST_READ = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024
DEFAULT_ALIGNMENT = 32
_I64_MAX = 2**63 - 1

# ggml type id -> (name, elements per block, bytes per block). ggml.h / gguf-py constants.GGML_QUANT_SIZES.
GGML_TYPES: Mapping[int, tuple[str, int, int]] = MappingProxyType(
    {
        0: ("F32", 1, 4),
        1: ("F16", 1, 2),
        2: ("Q4_0", 32, 18),
        3: ("Q4_1", 32, 20),
        6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24),
        8: ("Q8_0", 32, 34),
        9: ("Q8_1", 32, 40),
        10: ("Q2_K", 256, 84),
        11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144),
        13: ("Q5_K", 256, 176),
        14: ("Q6_K", 256, 210),
        15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66),
        17: ("IQ2_XS", 256, 74),
        18: ("IQ3_XXS", 256, 98),
        19: ("IQ1_S", 256, 50),
        20: ("IQ4_NL", 32, 18),
        21: ("IQ3_S", 256, 110),
        22: ("IQ2_S", 256, 82),
        23: ("IQ4_XS", 256, 136),
        24: ("I8", 1, 1),
        25: ("I16", 1, 2),
        26: ("I32", 1, 4),
        27: ("I64", 1, 8),
        28: ("F64", 1, 8),
        29: ("IQ1_M", 256, 56),
        30: ("BF16", 1, 2),
        34: ("TQ1_0", 256, 54),
        35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17),
        40: ("NVFP4", 64, 36),
        41: ("Q1_0", 128, 18),
    }
)
TYPE_BY_NAME: Mapping[str, tuple[int, int]] = MappingProxyType({n: (b, s) for n, b, s in GGML_TYPES.values()})
UNQUANTIZED = frozenset({"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"})

# GGUF value types: id -> (name, struct format or None for string/array)
_VALUE_TYPES: dict[int, tuple[str, str | None]] = {
    0: ("UINT8", "<B"),
    1: ("INT8", "<b"),
    2: ("UINT16", "<H"),
    3: ("INT16", "<h"),
    4: ("UINT32", "<I"),
    5: ("INT32", "<i"),
    6: ("FLOAT32", "<f"),
    7: ("BOOL", "<?"),
    8: ("STRING", None),
    9: ("ARRAY", None),
    10: ("UINT64", "<Q"),
    11: ("INT64", "<q"),
    12: ("FLOAT64", "<d"),
}
STRING, ARRAY = 8, 9
KEEP_STRING = 200  # longer string values are summarised, not kept

SPLIT_PATTERN = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_names(name: str) -> list[str] | None:
    """All file names of the split set ``name`` belongs to (llama.cpp ``gguf-split`` naming), or None."""
    m = SPLIT_PATTERN.match(name)
    if not m or int(m["count"]) < 1:
        return None
    count = int(m["count"])
    return [f"{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    alignment: int
    header_bytes: int  # where the tensor infos end
    data_start: int  # header_bytes rounded up to the alignment
    data_bytes: int  # where the last tensor's data ends, relative to data_start
    kv: Mapping[str, object]  # scalars and short strings; arrays and long strings as a short description
    tensors: tuple[TensorRecord, ...]
    header_only: bool


class _Cursor:
    """Sequential reads over a ByteSource, fetching growing chunks only when the parse needs more bytes."""

    def __init__(self, source, where: str, size: int | None):
        self.source, self.where, self.size = source, where, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0
        self.chunk = FIRST_READ

    def _need(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > MAX_HEADER_BYTES:
            raise HeaderError(self.where, f"{what} at byte {self.pos} runs past the {MAX_HEADER_BYTES}-byte header cap")
        if self.size is not None and end > self.size:
            raise HeaderError(self.where, f"{what} at byte {self.pos} needs {n} bytes but the file ends at byte {self.size}")
        have = self.base + len(self.buf)
        if self.base <= self.pos and end <= have:
            return
        start = have if self.base <= self.pos <= have else self.pos
        want = max(end - start, self.chunk)
        self.chunk = min(self.chunk * 2, MAX_CHUNK)
        if self.size is not None:
            want = min(want, self.size - start)
        data = self.source.read(start, want)
        if len(data) < end - start:
            raise ReadError(self.where, f"file ended at byte {start + len(data)} inside the header ({what} needs byte {end})")
        if start == have and self.base <= self.pos:
            self.buf = self.buf[self.pos - self.base :] + data
            self.base = self.pos
        else:
            self.buf, self.base = data, start

    def take(self, n: int, what: str) -> bytes:
        self._need(n, what)
        i = self.pos - self.base
        self.pos += n
        return self.buf[i : i + n]

    def unpack(self, fmt: str, what: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def skip(self, n: int, what: str) -> None:
        end = self.pos + n
        if end > MAX_HEADER_BYTES:
            raise HeaderError(self.where, f"{what} at byte {self.pos} runs past the {MAX_HEADER_BYTES}-byte header cap")
        if self.size is not None and end > self.size:
            raise HeaderError(self.where, f"{what} at byte {self.pos} spans {n} bytes but the file ends at byte {self.size}")
        self.pos = end

    def remaining(self) -> int | None:
        return None if self.size is None else self.size - self.pos


def _q(name: str, limit: int = 80) -> str:
    r = repr(name)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _string(cur: _Cursor, what: str, limit: int, strict: bool = True) -> str:
    n = cur.unpack("<Q", f"{what} length")
    if n > limit:
        raise HeaderError(cur.where, f"{what} at byte {cur.pos - 8} declares {n} bytes, over the {limit}-byte limit")
    raw = cur.take(n, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if strict:
            raise HeaderError(cur.where, f"{what} at byte {cur.pos - n} is not valid UTF-8") from None
        return raw.decode("utf-8", errors="replace")


def _value(cur: _Cursor, vtype: int, key: str, in_array: bool = False) -> object:
    if vtype not in _VALUE_TYPES:
        raise HeaderError(cur.where, f"key {_q(key)} has unknown value type {vtype}")
    name, fmt = _VALUE_TYPES[vtype]
    if fmt is not None:
        return cur.unpack(fmt, f"value of {_q(key)}")
    if vtype == STRING:
        s = _string(cur, f"string value of {_q(key)}", MAX_STRING, strict=False)
        return s if len(s) <= KEEP_STRING else f"<string of {len(s)} characters>"
    if in_array:
        raise HeaderError(cur.where, f"key {_q(key)} is an array of arrays (not supported by GGUF readers)")
    etype = cur.unpack("<I", f"array type of {_q(key)}")
    if etype not in _VALUE_TYPES:
        raise HeaderError(cur.where, f"key {_q(key)} is an array of unknown type {etype}")
    if etype == ARRAY:
        raise HeaderError(cur.where, f"key {_q(key)} is an array of arrays (not supported by GGUF readers)")
    count = cur.unpack("<Q", f"array length of {_q(key)}")
    if count > MAX_ARRAY:
        raise HeaderError(cur.where, f"array {_q(key)} declares {count} elements, over the {MAX_ARRAY} limit")
    ename, efmt = _VALUE_TYPES[etype]
    least = struct.calcsize(efmt) if efmt else 8  # a string is at least its 8-byte length
    left = cur.remaining()
    if left is not None and count * least > left:
        raise HeaderError(cur.where, f"array {_q(key)} declares {count} {ename} elements but only {left} bytes remain")
    if efmt is not None:
        if count <= 16:
            return [cur.unpack(efmt, f"element of {_q(key)}") for _ in range(count)]
        cur.skip(count * struct.calcsize(efmt), f"array {_q(key)}")
    else:
        for _ in range(count):
            _string(cur, f"string in array {_q(key)}", MAX_STRING, strict=False)
    return f"<array of {count} {ename}>"


def parse(source, where: str | None = None, file: str | None = None) -> GGUFHeader:
    """Parse and validate the GGUF header of ``source``; read nothing of the tensor data.

    A flat checklist, kept as one function: the header's fields in file order, each validated where it is read."""
    where = where or source.name
    file = file if file is not None else where
    size = source.size()
    cur = _Cursor(source, where, size)
    magic = cur.take(4, "magic") if size is None or size >= 4 else b""
    if magic != MAGIC:
        raise HeaderError(where, f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        if struct.unpack(">I", struct.pack("<I", version))[0] in (2, 3):
            raise HeaderError(where, f"big-endian GGUF (version {version} byte-swapped) is not supported")
        raise HeaderError(where, f"unsupported GGUF version {version} (2 and 3 are supported)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "key/value count")
    if n_tensors > MAX_TENSORS:
        raise HeaderError(where, f"declares {n_tensors} tensors, over the {MAX_TENSORS} limit")
    if n_kv > MAX_KV:
        raise HeaderError(where, f"declares {n_kv} key/value pairs, over the {MAX_KV} limit")
    left = cur.remaining()
    # least bytes: a key/value is 8 (key length) + 4 (type) + 1; a tensor info 8 + 4 + 4 + 8
    if left is not None and n_kv * 13 + n_tensors * 24 > left:
        raise HeaderError(where, f"declares {n_tensors} tensors and {n_kv} key/value pairs but only {left} bytes remain")

    kv: dict[str, object] = {}
    for _ in range(n_kv):
        key = _string(cur, "key", MAX_STRING)
        if key in kv:
            raise HeaderError(where, f"duplicate key {_q(key)}")
        vtype = cur.unpack("<I", f"value type of {_q(key)}")
        kv[key] = _value(cur, vtype, key)

    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment & (alignment - 1):
        raise HeaderError(where, f"general.alignment {alignment!r} is not a power of two")

    infos = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = _string(cur, "tensor name", MAX_NAME)
        if name in names:
            raise HeaderError(where, f"duplicate tensor {_q(name)}")
        names.add(name)
        n_dims = cur.unpack("<I", f"dims of {_q(name)}")
        if n_dims > MAX_DIMS:
            raise HeaderError(where, f"tensor {_q(name)} has {n_dims} dims, over ggml's {MAX_DIMS}")
        ne = [cur.unpack("<Q", f"dim of {_q(name)}") for _ in range(n_dims)]
        numel = 1
        for d in ne:
            if d > _I64_MAX:
                raise HeaderError(where, f"tensor {_q(name)} dim {d} overflows int64")
            numel *= d
            if numel > _I64_MAX:
                raise HeaderError(where, f"tensor {_q(name)} shape {ne} overflows int64 elements")
        type_id = cur.unpack("<I", f"type of {_q(name)}")
        if type_id not in GGML_TYPES:
            raise HeaderError(where, f"tensor {_q(name)} has unknown ggml type {type_id}")
        tname, block, type_size = GGML_TYPES[type_id]
        row = ne[0] if ne else 1
        if row % block:
            raise HeaderError(where, f"tensor {_q(name)} row of {row} {tname} elements is not a multiple of its block size {block}")
        offset = cur.unpack("<Q", f"offset of {_q(name)}")
        infos.append((name, tuple(reversed(ne)), tname, numel // block * type_size, offset))

    header_bytes = cur.pos
    data_start = -(-header_bytes // alignment) * alignment
    tensors = []
    position = 0
    for name, shape, tname, nbytes, offset in infos:
        if offset != position:
            raise HeaderError(
                where, f"tensor {_q(name)} data starts at offset {offset} but the previous tensor's data ends at {position}"
            )
        tensors.append(TensorRecord(name, tname, shape, file, offset, offset + nbytes, stored_bytes=nbytes))
        position = offset + -(-nbytes // alignment) * alignment
    data_bytes = tensors[-1].end if tensors else 0
    header_only = False
    if size is not None:
        if data_bytes and size in (header_bytes, data_start):
            header_only = True
        elif size < data_start + data_bytes:
            raise HeaderError(where, f"tensors span {data_bytes} data bytes but the file holds {max(size - data_start, 0)} after the header")
    return GGUFHeader(version, alignment, header_bytes, data_start, data_bytes, MappingProxyType(kv), tuple(tensors), header_only)


def read_gguf(source, name: str, where: str):
    """The formats.READERS entry: one GGUF file's header as a FileRead."""
    h = parse(source, where, name)
    record = FileRecord(
        path=name,
        size=source.size(),
        header_bytes=h.header_bytes,
        tensors=len(h.tensors),
        header_only=h.header_only,
        bytes_read=getattr(source, "bytes_read", h.header_bytes),
        format="gguf",
        info=h.kv,
        storages=MappingProxyType({"data": ("at", h.data_start)}),  # tensor offsets count from the data section
    )
    return FileRead(record, h.tensors)


def split_findings(records) -> list[Finding]:
    """Disagreements between a GGUF split set and its ``split.*`` keys (missing, extra or miscounted shards)."""
    gg = [r for r in records if r.format == "gguf"]
    findings: list[Finding] = []
    counts = {r.info.get("split.count") for r in gg if "split.count" in r.info}
    if not counts:
        if len(gg) > 1:
            findings.append(Finding("gguf-split", f"{len(gg)} GGUF files without split.count keys: counted them all"))
        return findings
    if len(counts) > 1:
        findings.append(Finding("gguf-split", f"shards disagree on split.count: {sorted(counts)}"))
    count = max(c for c in counts if isinstance(c, int))
    nos = sorted(r.info.get("split.no") for r in gg if isinstance(r.info.get("split.no"), int))
    if nos != list(range(count)):
        findings.append(Finding("gguf-split", f"split.count is {count} but the shards read have split.no {nos}"))
    declared = {r.info.get("split.tensors.count") for r in gg if "split.tensors.count" in r.info}
    held = sum(r.tensors for r in gg)
    for d in declared:
        if isinstance(d, int) and d != held:
            findings.append(Finding("gguf-split", f"split.tensors.count is {d} but the shards hold {held} tensors"))
    return findings


def architecture(records) -> str | None:
    for r in records:
        a = r.info.get("general.architecture") if r.format == "gguf" else None
        if isinstance(a, str):
            return a
    return None


def kv_value(records, key: str) -> object:
    """The first value of ``key`` among GGUF file records (``{arch}`` is replaced by the architecture)."""
    arch = architecture(records)
    if "{arch}" in key:
        if arch is None:
            return None
        key = key.replace("{arch}", arch)
    for r in records:
        if r.format == "gguf" and key in r.info:
            return r.info[key]
    return None
