"""Header cache for Hub audits: what a commit's files said is immutable, so keep it.

Layout, under ``$HF_HOME/ckptcount/headers`` (next to huggingface_hub's own ``hub/`` cache; ``CKPTCOUNT_CACHE``
overrides the root)::

    <host>/models--<org>--<name>/refs/<revision>         the commit sha that revision resolved to, last time
    <host>/models--<org>--<name>/<sha>[--<subpath>].entry the listing, config.json, the index and, per file, the
                                                          byte ranges the readers consumed (for a sharded repo read
                                                          without the listing: the files read, with their sizes)

An entry is one line of JSON (what the entry holds, with each byte string as ``[start, length]`` in what follows the
line), a newline, then those byte strings as they came, one after the other. Version 1 was a JSON document with the
bytes in base64: for a 90,000-tensor repo (12 MB of headers and an 8 MB index, 26 MB of JSON) writing an entry took
~0.1 s of a ~2 s audit, most of it base64 under the GIL, and a replay decoded it all again. Raw bytes need neither:
the same entry is written in ~0.015 s (:func:`entry_bytes`).

Entries are written to a temporary file in the same folder and moved into place with ``os.replace``, so a reader never
sees half an entry, and two audits of the same commit can race safely. A file that does not parse, or whose ranges
run past its end, is ignored (and refetched online). Replaying an entry feeds the same bytes to the same readers, so
any format works cached.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote, urlparse

VERSION = 2
SHA = __import__("re").compile(r"^[0-9a-f]{40}$")


def root() -> Path:
    if os.environ.get("CKPTCOUNT_CACHE"):
        return Path(os.environ["CKPTCOUNT_CACHE"])
    home = os.environ.get("HF_HOME")
    if not home:
        from huggingface_hub import constants

        home = constants.HF_HOME
    return Path(home) / "ckptcount" / "headers"


def _repo_dir(endpoint: str, repo: str) -> Path:
    p = urlparse(endpoint)
    host = (p.hostname or "hub") + (f"_{p.port}" if p.port else "")
    return root() / host / ("models--" + repo.replace("/", "--"))


def _entry_name(sha: str, sub: str) -> str:
    if not sub:
        return f"{sha}.entry"
    import hashlib

    return f"{sha}--{hashlib.sha256(sub.encode()).hexdigest()[:16]}.entry"


def _write_atomic(path: Path, data: bytes | list[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # not at start-up: an offline replay never writes

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                f.writelines(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def resolve_ref(endpoint: str, repo: str, revision: str) -> str | None:
    """The sha ``revision`` resolved to last time (a sha resolves to itself)."""
    if SHA.match(revision):
        return revision
    try:
        sha = (_repo_dir(endpoint, repo) / "refs" / quote(revision, safe="")).read_text().strip()
    except OSError:
        return None
    return sha if SHA.match(sha) else None


def save_ref(endpoint: str, repo: str, revision: str, sha: str) -> None:
    if revision != sha:
        try:
            _write_atomic(_repo_dir(endpoint, repo) / "refs" / quote(revision, safe=""), sha.encode())
        except OSError:
            pass  # a read-only cache only costs requests


def load(endpoint: str, repo: str, sha: str, sub: str) -> dict | None:
    """The cached entry for this commit and subfolder, decoded, or None: also when it does not parse, or any field is
    not of the type written (a damaged entry is fetched again, never half-replayed)."""
    path = _repo_dir(endpoint, repo) / _entry_name(sha, sub)
    try:
        data = path.read_bytes()
        end = data.index(b"\n")
        obj = json.loads(data[:end])
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("version") != VERSION or obj.get("sha") != sha or obj.get("sub") != sub:
        return None
    blobs = memoryview(data)[end + 1 :]

    def blob(span) -> bytes:
        if not (isinstance(span, list) and len(span) == 2 and all(_count(x) for x in span) and span[0] + span[1] <= len(blobs)):
            raise ValueError("not a range of the entry")
        return blobs[span[0] : span[0] + span[1]].tobytes()

    try:
        listing, files = obj["listing"], obj["files"]
        if not (isinstance(listing, dict) and all(v is None or _count(v) for v in listing.values())):
            return None
        if not isinstance(obj.get("listed", True), bool) or not isinstance(files, dict):
            return None
        obj["config"] = None if obj.get("config") is None else blob(obj["config"])
        obj["index"] = None if obj.get("index") is None else blob(obj["index"])
        decoded = {}
        for name, f in files.items():
            if not (isinstance(f, dict) and _count(f.get("size")) and isinstance(f.get("segments"), list)):
                return None
            segments = []
            for seg in f["segments"]:
                if not (isinstance(seg, list) and len(seg) == 3 and _count(seg[0])):
                    return None
                segments.append((seg[0], blob(seg[1:])))
            decoded[name] = {"size": f["size"], "segments": segments}
    except (KeyError, ValueError):
        return None
    obj["files"] = decoded
    return obj


def _count(x) -> bool:
    """A JSON integer >= 0 (not a bool, not a float)."""
    return type(x) is int and x >= 0


def save(
    endpoint: str, repo: str, sha: str, sub: str, *, listing: dict[str, int | None], config: bytes | None, index: bytes | None,
    files: dict[str, dict], listed: bool = True,
) -> None:
    """Write one entry: ``files`` maps a file name to {"size": int, "segments": [(offset, bytes-like), ...]}.

    ``listed``: ``listing`` is the repo's listing; False when it only names the files read (a sharded repo read
    without the listing). Entries written before this flag existed were all listed. The version-1 entry of the same
    commit (``.json``), which this version never reads, is removed."""
    path = _repo_dir(endpoint, repo) / _entry_name(sha, sub)
    try:
        _write_atomic(path, entry_bytes(repo, sha, sub, listing, config, index, files, listed))
        path.with_suffix(".json").unlink(missing_ok=True)
    except OSError:
        pass


def entry_bytes(repo: str, sha: str, sub: str, listing: dict, config, index, files: dict[str, dict], listed: bool = True) -> list:
    """The entry, as pieces to write one after the other: its JSON line (``config``, ``index`` and each segment's bytes
    given as ``[start, length]`` in what follows the line), a newline, then the bytes themselves as they came
    (memoryviews of the received segments: no copy, no encoding)."""
    blobs: list = []
    at = 0

    def span(b) -> list[int] | None:
        nonlocal at
        if b is None:
            return None
        blobs.append(b)
        start, at = at, at + len(b)
        return [start, len(b)]

    head = {
        "version": VERSION, "repo": repo, "sha": sha, "sub": sub, "listing": listing, "listed": listed,
        "config": span(config), "index": span(index),
        "files": {name: {"size": f["size"], "segments": [[int(o), *span(d)] for o, d in f["segments"]]} for name, f in files.items()},
    }
    return [json.dumps(head, separators=(",", ":")).encode(), b"\n", *blobs]  # ensure_ascii: no newline in the line


def merge_ranges(reads: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of (offset, length) reads as sorted, non-overlapping (offset, length) ranges; adjacent ones are joined."""
    out: list[list[int]] = []
    for off, length in sorted(reads):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return [(o, n) for o, n in out]


def merge_segments(reads: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Union of (offset, bytes) reads as sorted, non-overlapping segments."""
    out: list[list] = []
    for off, data in sorted(reads, key=lambda r: r[0]):
        if out and off <= out[-1][0] + len(out[-1][1]):
            start, buf = out[-1]
            overlap = start + len(buf) - off
            if overlap < len(data):
                buf += data[overlap:]
        else:
            out.append([off, bytearray(data)])
    return [(o, bytes(b)) for o, b in out]


class CachedFile:
    """A ByteSource replaying the bytes a previous audit's readers consumed. A read outside them is a cache miss."""

    def __init__(self, name: str, size: int, segments: list[tuple[int, bytes]]):
        self.name = name
        self._size = size
        self.segments = segments
        self.bytes_read = 0
        self.miss = False

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self._size)
        if end <= offset:
            return b""
        for start, data in self.segments:
            if start <= offset and end <= start + len(data):
                self.bytes_read += end - offset
                return data[offset - start : end - start]
        self.miss = True
        raise CacheMiss(self.name)


class CacheMiss(Exception):
    pass
