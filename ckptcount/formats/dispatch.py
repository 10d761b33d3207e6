"""One entry point per checkpoint file: bytes in (any :class:`ByteSource`, local or remote), a :class:`FileRead` out.

Each format module parses and validates its own header; this module only picks the reader by the format the file name
announces (:func:`.base.format_of`).
"""

from __future__ import annotations

from ..records import FileRecord
from .base import FileRead, format_of
from .gguf import read_gguf
from .safetensors import ByteSource, read_header


def read_safetensors(source: ByteSource, name: str, where: str) -> FileRead:
    header = read_header(source, where, file=name)
    tensors = header.tensors
    record = FileRecord(
        path=name,
        size=source.size(),
        header_bytes=header.header_bytes,
        tensors=len(tensors),
        header_only=header.header_only,
        metadata=header.metadata,
        bytes_read=getattr(source, "bytes_read", 8 + header.header_bytes),
        format="safetensors",
    )
    return FileRead(record, tensors, data_bytes=header.data_bytes)


def _read_pytorch(source: ByteSource, name: str, where: str) -> FileRead:
    from .pytorch.reader import read_pytorch  # imported on first use: the pickle machine is large, most targets are not .bin

    return read_pytorch(source, name, where)


READERS = {"safetensors": read_safetensors, "gguf": read_gguf, "pytorch": _read_pytorch}


def read_file(source: ByteSource, name: str, where: str) -> FileRead:
    """Read one checkpoint file's header with the reader its format needs."""
    fmt = format_of(name) or "safetensors"
    return READERS[fmt](source, name, where)
