"""HTTP byte sources: a Hub file read with range requests, so the format readers run on it unchanged.

One :class:`HubClient` per audit holds huggingface_hub's shared session (``get_session``), the auth headers it builds
(``build_hf_headers``: ``--token``, ``HF_TOKEN`` or the stored login) and the request counters. Every request goes
through :meth:`HubClient.get`, which:

- retries 429 (honouring ``Retry-After`` up to :data:`MAX_RETRY_AFTER` seconds), 5xx and dropped connections,
  including a connection that drops in the middle of a body, at most :data:`MAX_TRIES` times and within
  :data:`RETRY_BUDGET` seconds, then fails with one clear line. (huggingface_hub's ``http_backoff`` adds one second to
  every ``Retry-After``, obeys any ``Retry-After`` however long, and cannot retry a body that drops after the status
  line; that is why the loop is here.)
- maps every other error status through ``hf_raise_for_status`` (so the Hub's ``X-Error-Code`` decides between
  repository, revision and file not found, gated, ...) and turns it into a one-line :class:`CkptError`;
- streams the body and stops after the bytes it needs, so a server that ignores ``Range`` and answers 200 with a
  multi-gigabyte body costs no more than the bytes asked for: the connection is closed after them.

:class:`HttpFile` is the :class:`~ckptcount.formats.safetensors.ByteSource`: its first read asks for a speculative
block of :data:`FIRST_BLOCK` bytes (``Range: bytes=0-99999`` is 100,000 bytes: ranges are inclusive), every later miss
asks for exactly the bytes still missing, and the decision is made from the bytes actually received. A 206 must carry
a ``Content-Range`` that starts where we asked, ends no later than we asked, matches the body length and, when the
listing gave a size, the file's size; without a listing (shards named by an index) the ``Content-Range`` total is the
file's size.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ..errors import CkptError, ReadError, TargetNotFound
from .http_decode import ACCEPT_ENCODING, RANGE_ENCODING, Body, codings
from ..formats.safetensors import MAX_HEADER_BYTES

FIRST_BLOCK = 100_000  # bytes asked for by the first read of a file; huggingface_hub asks for 100,001
MAX_TRIES = 5  # attempts per request (so 4 retries)
BASE_WAIT = 0.25  # seconds before the first retry; doubles each time
MAX_WAIT = 4.0  # longest wait between two attempts, unless Retry-After asks for more
MAX_RETRY_AFTER = 30.0  # a Retry-After longer than this fails at once instead of hanging the audit
RETRY_BUDGET = 60.0  # seconds of waiting per request, all retries together
TIMEOUT = 30.0  # seconds without progress (connect or read) before a try counts as failed
ERROR_BODY_LIMIT = 65_536  # bytes of an error body read for the message

# at most 20 digits (2**64 has 20): a longer number is no byte position, and past 4,300 digits int() would raise
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)\s*$", re.IGNORECASE)


def _httpx(session):
    """The HTTP library ``session`` belongs to, for its exception types: huggingface_hub 2.x uses httpx2, 1.x httpx.

    Asked of the session rather than tried by import, since both can be installed side by side.
    """
    import importlib

    return importlib.import_module(type(session).__module__.partition(".")[0])


class AuthError(CkptError):
    """401/403: a gated or private repository, or a token without access."""

    kind = "auth"


class NetworkError(CkptError):
    """The server kept failing (429, 5xx, dropped connections) after every retry, or answered something unusable."""

    kind = "network"


class Unreachable(NetworkError):
    """No connection could be made to the server at all, after every retry (no network, DNS, refused)."""


class EntryNotFound(TargetNotFound):
    """404 with the Hub's ``X-Error-Code: EntryNotFound``: the repo and revision exist, the file does not."""


class OfflineError(CkptError):
    """HF_HUB_OFFLINE is set and the cache cannot answer."""

    kind = "offline"


@dataclass
class Reply:
    """What one GET gave: status, headers, the bytes kept, and the URL it ended at after redirects."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str
    consumed: int  # body bytes taken off the wire, before decoding (> len(body) when compressed or skipped through)


@dataclass
class Counters:
    requests: int = 0  # every HTTP request sent, redirect hops and retries included
    redirects: int = 0
    retries: int = 0
    bytes: int = 0  # body bytes received, as sent on the wire (compressed answers count their compressed size)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, *, requests: int = 0, redirects: int = 0, retries: int = 0, nbytes: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.redirects += redirects
            self.retries += retries
            self.bytes += nbytes


class HubClient:
    """Session, auth headers and counters for one audit. Thread-safe: shard headers are fetched in parallel."""

    def __init__(self, endpoint: str, token: str | None = None):
        from huggingface_hub.utils import build_hf_headers

        from .. import __version__

        self.endpoint = endpoint.rstrip("/")
        self.headers = build_hf_headers(token=token, library_name="ckptcount", library_version=__version__)
        self.authenticated = "authorization" in {k.lower() for k in self.headers}
        self.counters = Counters()

    def _headers_for(self, url: str, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(self.headers)
        if _origin(url) != _origin(self.endpoint):
            # A URL on another host (a CDN location we were redirected to before): never send it the token.
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        if extra:
            headers.update(extra)
        return headers

    def get(self, url: str, where: str, *, byte_range: tuple[int, int] | None = None, keep: tuple[int, int] | None = None, limit: int | None = None, missing_ok: bool = False) -> Reply:
        """GET ``url``; ``byte_range`` = (start, end exclusive) sends ``Range: bytes=start-(end-1)``.

        ``keep`` = (start, end) of the file to keep from a 200 answer (a server that ignored Range): the body is read
        up to ``end`` and the connection closed. ``limit`` caps a plain GET's body (a larger one is an error).
        ``missing_ok``: a 404 for the file (the Hub's ``EntryNotFound``, or a 404 without error code) returns a
        ``Reply`` with status 404 and an empty body instead of raising (used by the probes): its headers still carry
        the Hub's ``X-Repo-Commit``, the commit the revision resolved to.
        """
        from huggingface_hub.utils import get_session

        httpx = _httpx(get_session())
        if byte_range:
            extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1] - 1}", "Accept-Encoding": RANGE_ENCODING}
        else:
            extra = {"Accept-Encoding": ACCEPT_ENCODING}
        waited = 0.0
        last = ""
        for attempt in range(1, MAX_TRIES + 1):
            wait = None
            try:
                with get_session().stream("GET", url, headers=self._headers_for(url, extra), follow_redirects=True, timeout=TIMEOUT) as r:
                    hops = len(r.history)
                    self.counters.add(requests=1 + hops, redirects=hops)
                    status = r.status_code
                    if status == 429 or status >= 500:
                        last = f"HTTP {status}"
                        wait = _retry_after(r.headers.get("Retry-After"))
                        if wait is not None and wait > MAX_RETRY_AFTER:
                            raise NetworkError(where, f"rate limited (HTTP {status}): the server asks to retry after {wait:g} s")
                    elif status >= 400:
                        body = Body(r, where, allowed=True)
                        try:
                            body.read(ERROR_BODY_LIMIT)  # only drained: the message comes from the Hub's headers
                        except CkptError:
                            pass  # a garbled error body does not change the error
                        self.counters.add(nbytes=body.wire)
                        if status == 404 and missing_ok and _is_entry_missing(r):
                            return Reply(404, _headers(r), b"", str(r.url), body.wire)
                        raise self._error(r, where)
                    else:
                        return self._body(r, where, byte_range, keep, limit)
            except (httpx.TransportError, httpx.StreamError) as e:
                last = f"{type(e).__name__}: {e}".rstrip(": ")
                if isinstance(e, httpx.ConnectError) and attempt == MAX_TRIES:
                    scheme, host, port = _origin(url)
                    raise Unreachable(where, f"cannot connect to {scheme}://{host}:{port} ({e})") from None
            if attempt == MAX_TRIES:
                break
            delay = wait if wait is not None else min(MAX_WAIT, BASE_WAIT * 2 ** (attempt - 1))
            if waited + delay > RETRY_BUDGET:
                break
            self.counters.add(retries=1)
            time.sleep(delay)
            waited += delay
        raise NetworkError(where, f"gave up after {attempt} tries ({last})")

    def _body(self, r, where: str, byte_range, keep, limit) -> Reply:
        headers = _headers(r)
        if r.status_code == 206:
            if byte_range is None:
                raise NetworkError(where, "server answered 206 to a request without Range")
            m = _CONTENT_RANGE.match(headers.get("content-range", ""))
            if not m:
                raise NetworkError(where, f"206 with an invalid Content-Range {headers.get('content-range')!r}")
            first, last = int(m.group(1)), int(m.group(2))
            if first != byte_range[0] or last < first or last >= byte_range[1]:
                raise NetworkError(where, f"asked for bytes {byte_range[0]}-{byte_range[1] - 1}, server sent {first}-{last}")
            expected = last - first + 1
            reader = Body(r, where, allowed=False)
            body = reader.read(expected + 1)
            self.counters.add(nbytes=reader.wire)
            if len(body) != expected:
                raise ReadError(where, f"Content-Range {first}-{last} announces {expected} bytes but the body has {'more' if len(body) > expected else len(body)}")
            return Reply(206, headers, body, str(r.url), len(body))
        if r.status_code == 200:
            if byte_range is not None:
                start, end = keep or byte_range
                # The server ignored Range (and maybe identity too: the whole file, decoded, is still the file): read
                # only up to what is needed, then close.
                reader = Body(r, where, allowed=True)
                got = reader.read(end)
                self.counters.add(nbytes=reader.wire)
                return Reply(200, headers, got[start:], str(r.url), reader.wire)
            cap = limit if limit is not None else ERROR_BODY_LIMIT
            reader = Body(r, where, allowed=True)
            body = reader.read(cap + 1)
            self.counters.add(nbytes=reader.wire)
            if len(body) > cap:
                raise ReadError(where, f"file is over the {cap:,}-byte limit" + (" once decoded" if reader.stages else ""))
            return Reply(200, headers, body, str(r.url), reader.wire)
        raise NetworkError(where, f"unexpected HTTP {r.status_code}")

    def _error(self, r, where: str) -> CkptError:
        from huggingface_hub.errors import (
            DisabledRepoError,
            GatedRepoError,
            HfHubHTTPError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
        from huggingface_hub.utils import hf_raise_for_status

        login = "pass --token, set HF_TOKEN, or run `hf auth login`"
        try:
            hf_raise_for_status(r)
        except GatedRepoError:
            return AuthError(where, f"gated repository (HTTP {r.status_code}): accept its terms on the Hub, then {login}")
        except RevisionNotFoundError:
            return TargetNotFound(where, "revision not found (HTTP 404)")
        except RemoteEntryNotFoundError:
            return EntryNotFound(where, "file not found in the repository (HTTP 404)")
        except DisabledRepoError:
            return AuthError(where, f"access to this repository is disabled (HTTP {r.status_code})")
        except RepositoryNotFoundError:
            if self.authenticated and r.status_code in (401, 403):
                return AuthError(where, f"HTTP {r.status_code}: the token sent has no access to this repository")
            hint = "" if self.authenticated else f"; if it is private or gated, {login}"
            return TargetNotFound(where, f"repository not found (HTTP {r.status_code}){hint}")
        except HfHubHTTPError as e:
            if r.status_code in (401, 403):
                return AuthError(where, f"HTTP {r.status_code}: not authorized; {login}")
            msg = e.server_message or ""
            return NetworkError(where, f"HTTP {r.status_code}" + (f": {msg.splitlines()[0][:200]}" if msg else ""))
        return NetworkError(where, f"unexpected HTTP {r.status_code}")


def _headers(r) -> dict[str, str]:
    """The answer's headers, lower-cased; ``x-repo-commit`` taken from a redirect hop when the final answer (a CDN's)
    lacks it: the Hub puts it on its 302, and that is the commit the file was resolved at."""
    headers = {k.lower(): v for k, v in r.headers.items()}
    if "x-repo-commit" not in headers:
        for hop in r.history:
            commit = hop.headers.get("X-Repo-Commit")
            if commit:
                headers["x-repo-commit"] = commit
                break
    return headers


def _is_entry_missing(r) -> bool:
    """A 404 for a file in an existing repo (Hub: X-Error-Code EntryNotFound; plain servers: no error code)."""
    code = r.headers.get("X-Error-Code")
    return code in (None, "EntryNotFound")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _origin(url: str) -> tuple[str, str, int]:
    p = urlparse(url)
    return (p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme, 0))


class HttpFile:
    """A file on the Hub as a ByteSource. ``bytes_read`` counts body bytes received, ``requests`` the GETs sent.

    The first read fetches ``max(length, FIRST_BLOCK)`` bytes from its offset; later reads are served from what came
    back, and a read that runs past it fetches exactly the missing bytes (one request for the rest of a large header).
    After a redirect to another host (LFS files go to a CDN), later reads go straight to that location, without the
    token; if it has expired they go back through the Hub.
    """

    def __init__(self, client: HubClient, url: str, name: str, where: str, size: int | None = None, first_block: int = FIRST_BLOCK):
        self.client = client
        self.url = url
        self.name = where
        self.file = name
        self._size = size
        self.first_block = first_block
        self.segments: list[list] = []  # [start, bytearray] contiguous blocks received, in fetch order
        self.served: list[tuple[int, int]] = []  # (offset, length) of every read handed to a reader: what the cache keeps
        self.bytes_read = 0
        self.requests = 0
        self.range_ignored = False
        self.commit: str | None = None  # X-Repo-Commit of the first answer
        self._location: str | None = None
        self.missing = False

    def size(self) -> int | None:
        """The listing's size, else the ``Content-Range`` total of the first answer. A file opened without a size
        (shards named by an index, audited without the listing) fetches its first block when asked before any read:
        the block its reader's first read would fetch anyway, so a header still costs the same requests, and the
        reader checks its offsets against the true size."""
        if self._size is None and not self.segments and not self.missing:
            self._fetch(0, self.first_block)
        return self._size

    def probe(self, missing_ok: bool = True) -> bool:
        """Fetch the first block now (the loader starts this before it knows the file exists). False on a 404."""
        return self._fetch(0, self.first_block, missing_ok=missing_ok)

    def _fetch(self, start: int, end: int, missing_ok: bool = False) -> bool:
        if self._size is not None:
            end = min(end, self._size)
        if end <= start:
            return True
        url = self._location or self.url
        keep = (start, end)
        try:
            reply = self.client.get(url, self.name, byte_range=(start, end), keep=keep, missing_ok=missing_ok)
        except CkptError:
            if self._location is None:
                raise
            self._location = None  # a signed CDN URL may have expired: go back through the Hub once
            reply = self.client.get(self.url, self.name, byte_range=(start, end), keep=keep)
        self.requests += 1
        if self.commit is None:
            self.commit = reply.headers.get("x-repo-commit")
        if reply.status == 404:
            self.missing = True
            return False
        self.bytes_read += reply.consumed
        if reply.status == 206:
            m = _CONTENT_RANGE.match(reply.headers["content-range"])
            total = m.group(3)
            if total != "*":
                if self._size is None:
                    self._size = int(total)
                elif int(total) != self._size:
                    raise ReadError(self.name, f"the server says the file is {total} bytes but the listing says {self._size}")
            if _origin(reply.url) != _origin(self.client.endpoint):
                self._location = reply.url
        else:
            self.range_ignored = True
            length = reply.headers.get("content-length")
            if codings(reply.headers):
                length = None  # the length of a compressed body, not of the file
            if self._size is None and length and length.isascii() and length.isdigit() and len(length) <= 20:
                self._size = int(length)
        if reply.body:
            self._add(start, reply.body)
        return True

    def _add(self, start: int, data: bytes) -> None:
        for seg in self.segments:
            if seg[0] + len(seg[1]) == start:
                seg[1] += data
                return
        self.segments.append([start, bytearray(data)])

    def _have(self, offset: int) -> tuple[int, bytearray] | None:
        for seg in self.segments:
            if seg[0] <= offset < seg[0] + len(seg[1]):
                return seg[0], seg[1]
        return None

    def _ensure(self, offset: int, end: int) -> None:
        """Have bytes [offset, end) in a segment (as many as the file holds), fetching only what is missing: the first
        fetch of a file is the speculative block, a later one exactly the rest (never a second speculative block)."""
        if not self.segments and not self.missing:
            self._fetch(offset, max(end, offset + self.first_block))
        have = self._have(offset)
        if have is None:
            self._fetch(offset, end)
        else:
            start, data = have
            if start + len(data) < end:
                self._fetch(start + len(data), end)

    def _slice(self, offset: int, end: int) -> bytes:
        have = self._have(offset)
        if have is None:
            return b""
        start, data = have
        with memoryview(data) as view:  # one copy out of the segment, not a bytearray slice and then bytes()
            return view[offset - start : end - start].tobytes()

    def prefetch_header(self) -> None:
        """Network only, for a safetensors file: the first block, then the rest of the header its 8-byte length
        announces, so that the reader later parses without a request. Shard headers are fetched this way by many
        threads while one thread parses (:func:`ckptcount.targets.shards.read_all`): parsing is CPU, and a thread that parses
        between two requests holds the GIL that the others need to receive theirs. A length over the cap or past the
        end of the file is not fetched: the reader rejects it with its own message. Nothing is recorded as served."""
        size = self._size
        self._ensure(0, 8 if size is None else min(8, size))
        head = self._slice(0, 8)
        if len(head) < 8:
            return
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES:
            return
        end = 8 + n if self._size is None else min(8 + n, self._size)
        if end > 8:
            self._ensure(8, end)

    def read(self, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        end = offset + length
        if self._size is not None:
            end = min(end, self._size)
        if end <= offset:
            return b""
        self._ensure(offset, end)
        out = self._slice(offset, end)
        if out:
            self.served.append((offset, len(out)))
        return out

    def view(self, offset: int, length: int) -> memoryview:
        """A read-only view of bytes already received (for the header cache: no copy)."""
        have = self._have(offset)
        if have is None or offset + length > have[0] + len(have[1]):
            raise ValueError(f"{self.name}: bytes {offset}-{offset + length} were not received")
        start, data = have
        return memoryview(data).toreadonly()[offset - start : offset - start + length]
