"""Header cache for Hub audits: what a commit's files said is immutable, so keep it.

Layout, under ``$HF_HOME/ckptcount/headers`` (next to huggingface_hub's own ``hub/`` cache; ``CKPTCOUNT_CACHE``
overrides the root)::

    <host>/models--<org>--<name>/refs/<revision>        the commit sha that revision resolved to, last time
    <host>/models--<org>--<name>/<sha>[--<subpath>].json the listing, config.json, the index and, per file, the
                                                         byte ranges the readers consumed (for a sharded repo read
                                                         without the listing: the files read, with their sizes)

Entries are written to a temporary file in the same folder and moved into place with ``os.replace``, so a reader never
sees half an entry, and two audits of the same commit can race safely. A file that does not parse is ignored (and
refetched online). Replaying an entry feeds the same bytes to the same readers, so any format works cached.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from urllib.parse import quote, urlparse

VERSION = 1
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
        return f"{sha}.json"
    import hashlib

    return f"{sha}--{hashlib.sha256(sub.encode()).hexdigest()[:16]}.json"


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
    """The cached entry for this commit and subfolder, decoded, or None."""
    path = _repo_dir(endpoint, repo) / _entry_name(sha, sub)
    try:
        obj = json.loads(path.read_bytes())
        if obj.get("version") != VERSION or obj.get("sha") != sha or obj.get("sub") != sub:
            return None
        obj["config"] = _unb64(obj.get("config"))
        obj["index"] = _unb64(obj.get("index"))
        files = {}
        for name, f in obj["files"].items():
            files[name] = {"size": f["size"], "segments": [(int(o), base64.b64decode(d)) for o, d in f["segments"]]}
        obj["files"] = files
        return obj
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save(
    endpoint: str, repo: str, sha: str, sub: str, *, listing: dict[str, int | None], config: bytes | None, index: bytes | None,
    files: dict[str, dict], listed: bool = True,
) -> None:
    """Write one entry: ``files`` maps a file name to {"size": int, "segments": [(offset, bytes-like), ...]}.

    ``listed``: ``listing`` is the repo's listing; False when it only names the files read (a sharded repo read
    without the listing). Entries written before this flag existed were all listed."""
    try:
        _write_atomic(_repo_dir(endpoint, repo) / _entry_name(sha, sub), entry_bytes(repo, sha, sub, listing, config, index, files, listed))
    except OSError:
        pass


def entry_bytes(repo: str, sha: str, sub: str, listing: dict, config, index, files: dict[str, dict], listed: bool = True) -> list[bytes]:
    """The entry's JSON text, as pieces to write one after the other.

    The same document as ``json.dumps`` of {version, repo, sha, sub, listing, listed, config, index, files} with the bytes in
    base64, but the base64 text (which never needs escaping) is spliced in as it comes from ``b64encode`` instead of
    going through the JSON encoder as str: for a 90k-tensor repo (12 MB of headers, 26 MB of JSON) that is 0.05 s of
    encoding instead of 0.3 s, and no 26 MB string joined in memory.
    """
    head = json.dumps({"version": VERSION, "repo": repo, "sha": sha, "sub": sub, "listing": listing, "listed": listed}, separators=(",", ":"))
    parts: list[bytes] = [head[:-1].encode(), b',"config":', *_blob(config), b',"index":', *_blob(index), b',"files":{']
    for i, (name, f) in enumerate(files.items()):
        parts.append((("," if i else "") + json.dumps(name) + ':{"size":' + json.dumps(f["size"]) + ',"segments":[').encode())
        for j, (offset, data) in enumerate(f["segments"]):
            parts.append(f'{"," if j else ""}[{int(offset)},'.encode())
            parts.extend(_blob(data))
            parts.append(b"]")
        parts.append(b"]}")
    parts.append(b"}}")
    return parts


def _blob(b) -> tuple[bytes, ...]:
    return (b"null",) if b is None else (b'"', base64.b64encode(b), b'"')


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


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
