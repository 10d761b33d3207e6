"""Decode and validate a safetensors header without touching tensor data.

Hand-written on purpose: the ``safetensors`` package opens (and maps) the whole file and gives no way to read a header
from bytes that arrived over HTTP, and huggingface_hub's ``parse_*_safetensors_file_metadata`` validates none of the
format's rules (offsets, holes, overlaps, duplicate keys, coverage). This module is the checklist of the Rust reference
validator (safetensors/src/tensor.rs); each rule has its own message, naming the file and the tensor.

Headers as ``safetensors`` writes them are decoded by msgspec into typed records (``Entry``): its compiled decoder
checks each entry's keys and JSON types while it parses, so no per-tensor dict or list is ever built, and the rest of
the rules are checked a column at a time (:func:`_fast`). That path only accepts; anything it declines, valid or not,
is decoded again by the standard library's ``json`` and checked entry by entry, which words the error. On a
90,000-tensor set the msgspec path takes ~0.2 s (15-20%) off a whole local report (docs/robustness.md).
A process imports msgspec only once it has seen enough headers for that to pay off (:mod:`ckptcount.support.fastjson`).

The local reader and the Hub reader differ only in how bytes arrive; both end in :func:`parse_header`.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from functools import cache, partial
from itertools import repeat
from math import prod
from operator import and_, attrgetter, itemgetter, mul, rshift, sub
from types import MappingProxyType
from typing import Mapping, Protocol

from ..support import fastjson
from ..errors import HeaderError, ReadError
from ..records import DTYPE_BITS, TensorRecord, tensor_record

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's cap
_U64_MAX = 2**64 - 1


class ByteSource(Protocol):
    """Where bytes come from: a local file or an HTTP range reader."""

    name: str

    def size(self) -> int | None: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True)
class Header:
    header_bytes: int  # N
    tensors: tuple[TensorRecord, ...]  # in offset order
    metadata: Mapping[str, str]
    data_bytes: int  # the data section the tensors span (last end offset)
    header_only: bool


def header_length(first8: bytes, where: str, file_size: int | None) -> int:
    """N from the first 8 bytes, checked against the cap and (when known) the file size."""
    if len(first8) < 8:
        raise HeaderError(where, f"file is {len(first8)} bytes, too short for the 8-byte header length")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER_BYTES:
        raise HeaderError(where, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap")
    if file_size is not None and 8 + n > file_size:
        raise HeaderError(where, f"header length {n} runs past the end of the file ({file_size} bytes)")
    return n


def read_header(source: ByteSource, where: str | None = None, file: str | None = None) -> Header:
    """Read exactly the 8-byte length and the N header bytes from ``source``, then validate them.

    ``file`` is the name the tensor records carry (default: ``where``)."""
    where = where or source.name
    size = source.size()
    n = header_length(source.read(0, 8), where, size)
    buf = source.read(8, n)
    if len(buf) != n:
        raise ReadError(where, f"file ended after {len(buf)} of the {n} header bytes")
    return parse_header(buf, where, size, file)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


class _Duplicate(Exception):
    pass


def _decode(buf: bytes, where: str) -> dict:
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderError(where, f"header is not valid UTF-8 (byte {e.start} of {len(buf)})") from None
    try:
        obj = json.loads(text)  # no Python callback per JSON object: duplicates are ruled out by _no_duplicate_keys
        if not _no_duplicate_keys(obj, buf):
            obj = json.loads(text, object_pairs_hook=_no_duplicates)  # raises _Duplicate where there is one
    except _Duplicate as e:
        raise HeaderError(where, f"header has duplicate key {_q(e.args[0])}") from None
    except json.JSONDecodeError as e:
        raise HeaderError(where, f"header is not valid JSON: {e.msg} at byte {e.pos}") from None
    except ValueError:  # json's int() refuses literals over sys.get_int_max_str_digits() digits
        raise HeaderError(where, f"header is not valid JSON: an integer of more than {sys.get_int_max_str_digits()} digits") from None
    except RecursionError:
        raise HeaderError(where, "header JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise HeaderError(where, f"header is a JSON {type(obj).__name__}, not an object")
    return obj


def _no_duplicate_keys(obj: object, buf: bytes) -> bool:
    """True when the decoded header provably had no duplicate key; False means "parse again with the hook".

    Every member of every JSON object has exactly one ``:`` outside strings, and colons inside strings only add to the
    raw count, so ``buf.count(b":")`` >= members written >= members kept after decoding (a duplicate key keeps one).
    Counting the kept members of the top-level object and of each of its object values (nested deeper objects are
    not counted, which can only make the two differ) and finding them equal to the raw colons proves that nothing was
    dropped. A header with colons in its names or metadata values, or deeper objects, takes the exact path: it is
    decoded again with ``_no_duplicates`` called for every object (about 3x slower on a 90,000-tensor set).
    """
    if type(obj) is not dict:
        return False
    kept = len(obj)
    for value in obj.values():
        if type(value) is dict:
            kept += len(value)
    return buf.count(b":") == kept


def _q(name: str, limit: int = 80) -> str:
    """Quote an untrusted name for a one-line message: repr escapes control characters; long names are cut."""
    r = repr(name)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _j(value: object, limit: int = 60) -> str:
    """An untrusted JSON value for a message: ASCII-escaped, one line, cut when long."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_BITS = dict(DTYPE_BITS)


def _tensor(name: str, info: object, where: str, file: str) -> TensorRecord:
    if type(info) is not dict:
        raise HeaderError(where, f"tensor {_q(name)} is a JSON {type(info).__name__}, not an object")
    try:
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    except KeyError as e:
        raise HeaderError(where, f"tensor {_q(name)} has no {e.args[0]!r}") from None
    bits = _BITS.get(dtype) if type(dtype) is str else None
    if bits is None:
        raise HeaderError(where, f"tensor {_q(name)} has unknown dtype {_q(str(dtype), 40)}")
    if type(shape) is not list:
        raise HeaderError(where, f"tensor {_q(name)} has invalid shape {_j(shape)}")
    numel = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise HeaderError(where, f"tensor {_q(name)} has invalid shape {_j(shape)}")
        numel *= d
        if numel > _U64_MAX:  # keeps the product a bounded integer whatever the header says
            raise HeaderError(where, f"tensor {_q(name)} shape {shape} overflows 64 bits")
    if not (type(offsets) is list and len(offsets) == 2 and type(offsets[0]) is int and type(offsets[1]) is int and offsets[0] >= 0):
        raise HeaderError(where, f"tensor {_q(name)} has invalid data_offsets {_j(offsets)}")
    begin, end = offsets
    if end < begin or end > _U64_MAX:
        raise HeaderError(where, f"tensor {_q(name)} has data_offsets [{begin}, {end}] that end before they begin" if end < begin else f"tensor {_q(name)} has data_offsets beyond 64 bits")
    nbits = numel * bits
    if nbits > _U64_MAX:
        raise HeaderError(where, f"tensor {_q(name)} shape {shape} overflows 64 bits")
    if nbits % 8:
        raise HeaderError(where, f"tensor {_q(name)} is {nbits} bits of {dtype}, not a whole number of bytes")
    if end - begin != nbits // 8:
        raise HeaderError(where, f"tensor {_q(name)} declares {nbits // 8} bytes but its offsets span {end - begin}")
    return tensor_record(name, dtype, tuple(shape), file, begin, end, numel)


_BY_OFFSETS = attrgetter("begin", "end")
_MAX_FAST_RANK = 16  # the fast path's product of at most 16 dims stays a small integer; longer shapes go to _tensor


@cache
def _msgspec() -> tuple:
    """msgspec and the two decoders of :func:`_fast`, made on first use (:mod:`ckptcount.support.fastjson`)."""
    from typing import Annotated, Literal

    import msgspec

    # One tensor entry: exactly these three keys (a repeated key keeps its last value, which the colon count in _fast
    # catches); a dtype the format defines (a Literal: msgspec hands back the one interned string, no new object per
    # tensor); at most 16 dims, each >= 1 (a zero dim goes to the rules, which check overflow before it); offsets >= 0.
    # Anything else fails to decode, and the header goes to json and the rules.
    dim = Annotated[int, msgspec.Meta(ge=1)]
    offset = Annotated[int, msgspec.Meta(ge=0)]
    fields = [
        ("dtype", Literal[tuple(DTYPE_BITS)]),
        ("shape", Annotated[tuple[dim, ...], msgspec.Meta(max_length=_MAX_FAST_RANK)]),
        ("data_offsets", tuple[offset, offset]),
    ]
    entry = msgspec.defstruct("Entry", fields, forbid_unknown_fields=True, gc=False)
    return msgspec, msgspec.json.Decoder(dict[str, entry]), msgspec.json.Decoder(dict[str, str])


_DTYPE, _SHAPE, _OFFSETS = attrgetter("dtype"), attrgetter("shape"), attrgetter("data_offsets")
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_record = partial(tuple.__new__, TensorRecord)  # a TensorRecord from its nine fields, without a Python-level call
_METADATA_FIRST = '{"__metadata__":{'  # how safetensors begins a header that has metadata (serde_json, compact)
_WHOLE_BYTES = frozenset(d for d, bits in DTYPE_BITS.items() if bits % 8 == 0)
_BYTES = {d: bits // 8 for d, bits in DTYPE_BITS.items()}


def _fast(buf: bytes, file: str) -> tuple[list[TensorRecord], int, dict[str, str]] | None:
    """(records, where the data ends, metadata) of a header as ``safetensors`` writes it; None for any other header.

    Accepted: valid UTF-8 without a backslash (so no JSON escapes: every string is its literal bytes), either with
    no ``__metadata__`` or with it first, compact, mapping strings to strings; every other member an ``Entry``
    (:func:`_msgspec`: a known dtype, 1 to 16 dims each >= 1, offsets >= 0), decoded by msgspec in one call into a
    dict; no duplicate key (the colon count of :func:`_no_duplicate_keys`); in offset order from byte 0 without
    holes, each span the size its shape and dtype give. The metadata is cut off at the first ``}`` after its
    ``{``: without backslashes and without nested objects, that slice decodes only if the ``}`` really closes it.
    The remaining checks are C-level passes over whole columns (``map``, ``set``, list equality) and the records are
    built the same way: no Python-level step per tensor. Every header this declines goes to ``json`` and the
    entry-by-entry rules; accepting here implies they accept with the same records (tests/test_fuzz_safetensors).
    """
    if b"\\" in buf:
        return None
    msgspec, entries_decoder, metadata_decoder = _msgspec()
    try:
        text = buf.decode("utf-8")
        metadata: dict[str, str] = {}
        members = 0
        if text.startswith(_METADATA_FIRST):
            close = text.index("}", len(_METADATA_FIRST))
            metadata = metadata_decoder.decode(text[len(_METADATA_FIRST) - 1 : close + 1])
            after = text[close + 1 : close + 3]
            if after == ',"':  # the tensors follow
                text = "{" + text[close + 2 :]
            elif after[:1] == "}" and not text[close + 2 :].strip(" \t\n\r"):  # metadata alone, then padding
                text = "{}"
            else:
                return None
            members = 1
        entries = entries_decoder.decode(text)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, ValueError):  # ValueError: no "}"
        return None
    if "__metadata__" in entries:  # an entry-shaped __metadata__ (not first): the rules refuse it as metadata
        return None
    members += len(entries)
    if buf.count(b":") != members + len(metadata) + 3 * len(entries):  # a repeated key was dropped somewhere
        return None
    if not entries:
        return [], 0, metadata
    values = entries.values()
    dtypes, shapes, offsets = list(map(_DTYPE, values)), list(map(_SHAPE, values)), list(map(_OFFSETS, values))
    begins, ends = list(map(_FIRST, offsets)), list(map(_SECOND, offsets))
    # in offset order from 0, each tensor starting where the one before ends; with every span >= 0 (checked below
    # against the dtype's size) this also gives 0 <= begin <= end, and the last end is the largest
    if begins[0] != 0 or begins[1:] != ends[:-1] or ends[-1] > _U64_MAX:
        return None
    numels = list(map(prod, shapes))
    spans = list(map(sub, ends, begins))
    if _WHOLE_BYTES.issuperset(dtypes):  # each size is numel x bytes; nbits = 8 x that fits in 64 bits
        sizes = list(map(mul, numels, map(_BYTES.__getitem__, dtypes)))
        if max(sizes) > _U64_MAX >> 3 or sizes != spans:
            return None
    else:  # F4, F6: sizes in bits, which must come to whole bytes
        nbits = list(map(mul, numels, map(_BITS.__getitem__, dtypes)))
        if max(nbits) > _U64_MAX or any(map(and_, nbits, repeat(7))) or list(map(rshift, nbits, repeat(3))) != spans:
            return None
    nothing = repeat(None)
    records = list(map(_record, zip(entries, dtypes, shapes, repeat(file), begins, ends, nothing, nothing, numels)))
    return records, ends[-1], metadata


def _tensors(obj: dict, where: str, file: str) -> tuple[list[TensorRecord], int | None]:
    """Every tensor of a decoded header, validated, in header order; and where the data ends if, in that order, each
    tensor starts where the one before ends (files written by ``safetensors`` are: then no sort is needed), else None.

    The headers :func:`_fast` declines come here. The common entry (an object of exactly dtype, shape and
    data_offsets, all well-formed) is checked inline, without the per-entry validator's calls; anything else, valid
    or not, goes through :func:`_tensor`, which applies the same rules one by one and words the error. Both accept
    exactly the same entries (tests/test_fuzz_safetensors).
    """
    out: list[TensorRecord] = []
    append = out.append
    bits_of = _BITS
    position, contiguous = 0, True
    for name, info in obj.items():
        if type(info) is dict and len(info) == 3:
            dtype = info.get("dtype")
            shape = info.get("shape")
            offsets = info.get("data_offsets")
            if (
                type(dtype) is str
                and type(shape) is list
                and len(shape) <= _MAX_FAST_RANK
                and type(offsets) is list
                and len(offsets) == 2
                and dtype in bits_of
            ):
                begin, end = offsets
                if type(begin) is int and type(end) is int and 0 <= begin <= end <= _U64_MAX:
                    numel = 1
                    for n in shape:
                        if type(n) is not int or n < 0:
                            break
                        numel *= n
                    else:
                        nbits = numel * bits_of[dtype]
                        # numel > 0: every dim >= 1, so no prefix of the product exceeded 64 bits if the whole does not
                        # (_tensor checks each prefix: [2**40, 2**40, 0] is an overflow there, and here goes to it)
                        if numel and nbits <= _U64_MAX and not nbits & 7 and end - begin == nbits >> 3:
                            append(tensor_record(name, dtype, tuple(shape), file, begin, end, numel))
                            if begin != position:
                                contiguous = False
                            position = end
                            continue
        r = _tensor(name, info, where, file)
        append(r)
        if r.begin != position:
            contiguous = False
        position = r.end
    return out, (position if contiguous else None)


def parse_header(buf: bytes, where: str, file_size: int | None, file: str | None = None) -> Header:
    """Validate the N header bytes ``buf`` of the file ``where`` (of ``file_size`` bytes, when known).

    Checks, in order: UTF-8; JSON object without duplicate keys; ``__metadata__`` maps strings to strings; each tensor
    has a known dtype, a shape of non-negative integers, offsets that match its size without overflow; sorted by
    offset the tensors start at 0 and are contiguous (no hole, no overlap); the data section ends where the file does.
    A file of exactly 8 + N bytes is a saved header without data ("header only"), counted like the full file.
    """
    file = file if file is not None else where
    fast = _fast(buf, file) if fastjson.worth_it(len(buf)) else None
    if fast is not None:
        tensors, position, metadata = fast
    else:
        tensors, position, metadata = _slow(buf, where, file)
    n = len(buf)
    header_only = False
    if file_size is not None:
        if file_size == 8 + n and position > 0:
            header_only = True
        elif file_size != 8 + n + position:
            raise HeaderError(
                where, f"tensors span {position} data bytes but the file holds {file_size - 8 - n} after the header"
            )
    return Header(
        header_bytes=n,
        tensors=tuple(tensors),
        metadata=MappingProxyType(dict(metadata)),
        data_bytes=position,
        header_only=header_only,
    )


def _slow(buf: bytes, where: str, file: str) -> tuple[list[TensorRecord], int, dict]:
    """The tensors in offset order, where the data ends, and the metadata, by ``json`` and the rules one by one."""
    obj = _decode(buf, where)
    metadata = obj.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError(where, "__metadata__ must map strings to strings")
    tensors, position = _tensors(obj, where, file)
    if position is None:  # not contiguous in header order: sort by offsets, then say where it breaks, if it does
        tensors.sort(key=_BY_OFFSETS)
        position, previous = 0, None
        for t in tensors:
            if t.begin != position:
                before = f"{_q(previous.name)} ends at {position}" if previous else "the data section starts at 0"
                gap = t.begin - position
                what = f"a {gap}-byte hole" if gap > 0 else f"{-gap} bytes of overlap"
                raise HeaderError(where, f"tensor {_q(t.name)} starts at byte {t.begin} but {before}: {what}")
            position, previous = t.end, t
    return tensors, position, metadata
