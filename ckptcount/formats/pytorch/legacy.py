"""Legacy (pre-1.6, non-zip) ``torch.save`` files: five pickles in a row, then the raw storages.

Layout (torch/serialization.py ``_legacy_save``): pickle(MAGIC_NUMBER 0x1950a86a20f9469cfc6c), pickle(1001),
pickle(sys_info), pickle(obj) whose storages are persistent ids ``('storage', type, key, location, numel, view)``
(and, in a whole pickled ``nn.Module``, each module class once as ``('module', class, source file, source)``),
pickle(sorted storage keys), then per key an 8-byte element count and the storage bytes. The pickles are read with the
same inert :class:`~ckptcount.formats.pytorch.unpickler.PickleMachine` as zip files, from a prefix of the file that grows (64 KiB,
doubling) until the storage-key list has been parsed; the storages themselves are never read: their sizes follow from
the persistent ids, and the file size must equal the end of the key list plus those sizes.

The older tar format (torch < 0.4) is recognised and refused with a message that says what it is.
"""

from __future__ import annotations

from ...errors import TorchFileError
from ...records import Finding
from .unpickler import MAX_PICKLE_BYTES, Truncated, _storage, unpickle
from .values import Global, _q
from .vocabulary import ITEMSIZE
from .walker import TorchRead, check_storages, storage_ties, strided, unsafe_findings, walk

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
FIRST_READ = 64 * 1024


def legacy_storage(pid: object, m):
    if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module" and isinstance(pid[1], Global):
        # torch.save(model) names each nn.Module class once as ('module', class, source file, source): the class
        # reference stands in its place (its source text is ignored, never run)
        return pid[1]
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
        raise m._error("persistent id is not ('storage', type, key, location, numel, view)")
    _, stype, key, location, numel, view = pid
    if view is not None:
        raise m._error("legacy storage views (torch < 0.4) are not supported")
    return _storage(stype, key, location, numel, m)


def _no_storage(pid: object, m):
    raise m._error("persistent id outside the main pickle")


def read_legacy(source, name: str, where: str) -> TorchRead:
    size = source.size()
    if size is None:
        raise TorchFileError(where, "file size unknown")
    length = min(size, FIRST_READ)
    reads = got_bytes = 0
    while True:
        buf = source.read(0, length)
        reads += 1
        got_bytes += len(buf)
        if len(buf) != length:
            raise TorchFileError(where, f"file ended after {len(buf)} of {length} bytes")
        try:
            return _parse(buf, size, name, where, partial=length < size, reads=reads, got=got_bytes)
        except Truncated:
            if length >= min(size, MAX_PICKLE_BYTES):
                raise TorchFileError(where, f"pickles run past the first {length} bytes without ending (limit {MAX_PICKLE_BYTES})") from None
            length = min(size, length * 2, MAX_PICKLE_BYTES)


def _parse(buf: bytes, size: int, name: str, where: str, *, partial: bool, reads: int, got: int) -> TorchRead:
    if len(buf) >= 262 and buf[257:262] == b"ustar":
        raise TorchFileError(where, "a legacy tar-format torch file (torch < 0.4): not supported; re-save it with torch.save")
    if not buf.startswith(b"\x80"):
        raise TorchFileError(where, "neither a zip archive nor a pickle stream: not a PyTorch checkpoint")
    magic, pos = unpickle(buf, where, _no_storage, 0, partial)
    if magic.root != MAGIC_NUMBER:
        raise TorchFileError(where, "pickle stream without torch's magic number: not a PyTorch checkpoint (a plain pickle?)")
    version, pos = unpickle(buf, where, _no_storage, pos, partial)
    if version.root != PROTOCOL_VERSION:
        raise TorchFileError(where, f"legacy torch protocol version {version.root!r}, expected {PROTOCOL_VERSION}")
    _sys_info, pos = unpickle(buf, where, _no_storage, pos, partial)
    start = pos
    declared: dict[str, object] = {}  # every storage the pickle names, used by a listed tensor or not

    def storage(pid: object, m):
        got = legacy_storage(pid, m)
        if not isinstance(got, Global):
            declared.setdefault(got.key, got)
        return got

    main, pos = unpickle(buf, where, storage, pos, partial)
    pickle_bytes = pos - start
    keys, pos = unpickle(buf, where, _no_storage, pos, partial)
    if not isinstance(keys.root, list) or not all(isinstance(k, str) for k in keys.root):
        raise TorchFileError(where, "storage key list is not a list of strings")
    walked = walk(main.root, name)
    records, data_bytes, extra = check_storages(walked, None, where, name)
    listed = list(keys.root)
    if set(listed) != set(declared) or len(listed) != len(set(listed)):
        raise TorchFileError(where, f"storage key list ({len(listed)} keys) does not match the {len(declared)} storages the pickle names")
    unused = sorted(set(declared) - {t.storage.key for _, t in walked.tensors})
    if unused:  # e.g. a whole module's non-persistent buffers, which state_dict() leaves out
        extra.append(Finding("unreferenced-storage", f"{name}: {len(unused)} storages in the file are used by no listed tensor ({', '.join(_q(k, 20) for k in unused[:5])})"))
    expected = pos + sum(8 + s.numel * ITEMSIZE[s.dtype] for s in declared.values() if s.dtype)
    if any(s.dtype is None for s in declared.values()):
        raise TorchFileError(where, "untyped storage in a legacy file")
    if expected != size:
        raise TorchFileError(where, f"storages need {expected - pos} bytes after the pickles but the file holds {size - pos}")
    ties, tie_findings = storage_ties(walked.tensors, name)
    findings = unsafe_findings(main, name) + list(walked.findings) + list(tie_findings) + extra
    for other in (magic, version, _sys_info, keys):
        findings += unsafe_findings(other, name)
    at: dict[str, tuple[str, int]] = {}  # each storage: an 8-byte element count, then its bytes, in key-list order
    offset = pos
    for key in listed:
        at[key] = ("at", offset + 8)
        offset += 8 + declared[key].numel * ITEMSIZE[declared[key].dtype]
    return TorchRead(tuple(records), ties, tuple(findings), pickle_bytes, data_bytes, got, reads, at, strided(walked))
