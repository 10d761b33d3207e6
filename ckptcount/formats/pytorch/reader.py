"""PyTorch zip checkpoints (``torch.save`` since 1.6: ``.bin``, ``.pt``, ``.pth``, ``.ckpt``) read without executing
anything, from a handful of small range reads; :func:`read_pytorch` falls back to the legacy reader for other files.

A torch zip holds ``<top>/data.pkl`` (the pickled object, usually a state dict) and one uncompressed entry
``<top>/data/<key>`` per storage. ``data.pkl`` names every tensor with its storage key, dtype, shape, stride and
storage offset, so the tensors, and the names that view one storage (tied weights), are known from that file alone.

Hand-written on purpose, both halves: the zip container (:mod:`.zipdir`) and the pickle (:mod:`.unpickler`, an inert
machine that never imports, calls or instantiates anything); :mod:`.walker` turns its result into tensor records.
"""

from __future__ import annotations

from types import MappingProxyType

from ...errors import TorchFileError
from ...records import FileRecord
from ..base import FileRead
from .legacy import read_legacy
from .unpickler import MAX_PICKLE_BYTES, unpickle
from .values import _q
from .walker import TorchRead, check_storages, storage_ties, strided, unsafe_findings, walk
from .zipdir import NotZip, RangeReader, central_directory, read_entry


def read_torch_zip(source, name: str, where: str) -> TorchRead:
    """Read a torch zip's tensors through ``source``: the tail, maybe the central directory, then data.pkl."""
    r = RangeReader(source, where)
    entries = central_directory(r)
    if not entries:
        raise TorchFileError(where, "empty zip archive: not a PyTorch checkpoint")
    top = entries[0].name.split("/", 1)[0]
    by_name = {e.name: e for e in entries}
    pkl = by_name.get(f"{top}/data.pkl")
    if pkl is None:
        raise TorchFileError(where, f"zip holds no {_q(top + '/data.pkl')}: not a PyTorch checkpoint")
    data = read_entry(r, pkl, MAX_PICKLE_BYTES)
    result, end = unpickle(data, where)
    if end != len(data):
        raise TorchFileError(where, f"data.pkl has {len(data) - end} bytes after its STOP opcode")
    prefix = f"{top}/data/"
    sizes = {e.name[len(prefix) :]: e.usize for e in entries if e.name.startswith(prefix)}
    walked = walk(result.root, name)
    records, data_bytes, extra = check_storages(walked, sizes, where, name)
    ties, tie_findings = storage_ties(walked.tensors, name)
    findings = unsafe_findings(result, name) + list(walked.findings) + list(tie_findings) + extra
    # where --verify-ties may read a storage: a stored entry whose bytes are its whole size (anything else: not read)
    stored = {e.name[len(prefix) :]: ("zip", e.offset) for e in entries if e.name.startswith(prefix) and e.method == 0 and e.csize == e.usize}
    return TorchRead(tuple(records), ties, tuple(findings), len(data), data_bytes, r.bytes_read, r.reads, stored, strided(walked))


def read_pytorch(source, name: str, where: str):
    """formats.READERS["pytorch"]: a torch zip, or (pre-1.6) a legacy pickle stream."""
    try:
        got = read_torch_zip(source, name, where)
        fmt = "pytorch"
    except NotZip:
        got = read_legacy(source, name, where)
        fmt = "pytorch-legacy"
    record = FileRecord(
        path=name,
        size=source.size(),
        header_bytes=got.pickle_bytes,
        tensors=len(got.tensors),
        header_only=False,
        bytes_read=getattr(source, "bytes_read", got.bytes_read),
        format=fmt,
        storages=MappingProxyType(got.storages),
        strided=got.strided,
    )
    return FileRead(record, got.tensors, got.ties, got.findings, data_bytes=got.data_bytes)
