"""A stand-in for the Hugging Face Hub on 127.0.0.1: real HTTP, real sockets, no mocks of the HTTP layer.

Two servers: the Hub (API, ``resolve``) and a "CDN" on another port (so another origin), where ``resolve`` redirects
LFS files (``*.safetensors``, ``*.bin``, ``*.gguf``), as the Hub does. Endpoints are the ones huggingface_hub and
ckptcount call:

- ``GET /api/models/<org>/<name>[/revision/<rev>]`` (``?blobs=true`` adds sizes): ``sha`` and ``siblings``;
- ``GET /api/models/<org>/<name>/tree/<rev>[/<path>]``: the tree listing with sizes;
- ``GET|HEAD /<org>/<name>/resolve/<rev>/<path>`` with ``Range`` (inclusive, 206 + ``Content-Range``), ``X-Repo-Commit``
  (also on the 302 and on the EntryNotFound 404, as the Hub sends it), ``ETag``, ``X-Linked-Size``/``X-Linked-Etag`` on
  LFS redirects;
- ``GET /api/agent-harnesses`` (huggingface_hub's once-a-day registry fetch);
- errors as the Hub sends them: ``X-Error-Code`` RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo.

Two modes (``HubServer(mode=...)``; tests run both through the ``stand_in_hub`` fixture's parametrization):

- ``"plain"``: every answer has a ``Content-Length``, nothing is compressed, strong ETags, the CDN is another port of
  127.0.0.1;
- ``"hub"``: what the real Hub and its CloudFront CDN do that a hand-made server easily leaves out (each behaviour also
  switchable on its own attribute; docs/hub.md gives the public source for each): JSON and text answers over 1 KiB
  are gzip-compressed when the request accepts gzip (``compress``), sent chunked with no ``Content-Length``
  (``chunked``), with ``Vary: Origin,accept-encoding`` and ``X-Cache: Hit from cloudfront``; text files carry a weak
  ``ETag: W/"…"`` (``weak_etags``); the CDN is **another host name** (127.0.0.2: ``cdn_host``), so credentials must
  not follow the redirect; LFS redirects carry ``X-Xet-Hash`` too; tree listings are paginated with
  ``Link: <…>; rel="next"`` (``tree_page``).

Every request's headers are logged (:attr:`Logged.headers`), so tests can check that no token reached the CDN.

Faults are injected per request with :meth:`HubServer.fault`: a status (429 with ``Retry-After``, 503...), a
connection reset in the middle of a body, a body cut short by a clean close (``truncate``), a body that stalls halfway
for ``seconds`` (``slow-body``), a server that ignores ``Range`` (200 and the whole body), an answer of its own (``body``: a precompressed bomb), headers of its own on a
good answer (``headers``), and latency
(:attr:`HubServer.latency` for every request). Every request is logged with its start and end time, so tests count
requests and sequential round trips exactly.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class Virtual:
    """A file of ``size`` bytes that starts with ``head`` and continues with zeros, produced while it is sent."""

    head: bytes
    size: int

    def chunk(self, start: int, end: int) -> bytes:
        out = bytearray()
        if start < len(self.head):
            out += self.head[start : min(end, len(self.head))]
        if end > len(self.head):
            out += bytes(end - max(start, len(self.head)))
        return bytes(out)


@dataclass
class Repo:
    files: dict[str, bytes | Virtual]  # path -> content
    sha: str
    branches: dict[str, str] = field(default_factory=dict)  # extra refs: name -> sha (main -> sha is implicit)
    private: bool = False
    gated: bool = False
    commits: dict[str, dict[str, bytes | Virtual]] = field(default_factory=dict)  # other shas -> files


@dataclass
class Logged:
    host: str  # "hub" | "cdn"
    method: str
    path: str
    range: str | None
    auth: bool
    status: int
    start: float
    end: float
    sent: int  # body bytes written before the response ended (or the connection broke), as on the wire
    headers: dict[str, str] = field(default_factory=dict)  # the request's headers, names lower-cased
    encoding: str | None = None  # the answer's Content-Encoding


@dataclass
class Fault:
    match: str  # regex on the request path (without query)
    action: str  # "status" | "reset" | "truncate" | "slow-body" | "ignore-range" | "sleep" | "headers" | "body"
    times: int  # how many matching requests it applies to
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    host: str = "hub"
    body: bytes = b""  # "body": this answer, sent as it is (with ``headers``), e.g. a precompressed bomb


def sha_of(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def load_dir(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)).replace("\\", "/"): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


MODES = ("plain", "hub")
COMPRESS_MIN = 1024  # CloudFront compresses answers of 1,000 bytes and more; 1 KiB here


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and 127.0.0.2 (openssl's CLI), for the TLS mode; clients trust it
    through ``SSL_CERT_FILE`` (httpcore2's default SSL context reads it), the key stays beside it."""
    import subprocess

    cert, key = folder / "stand-in.pem", folder / "stand-in.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stand-in-hub",
         "-addext", "subjectAltName=IP:127.0.0.1,IP:127.0.0.2", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


class HubServer:
    def __init__(self, token: str = "hf_test_token", mode: str = "plain", tls: tuple[Path, Path] | None = None, connect_latency: float = 0.0):
        """``tls``: (certificate, key) from :func:`make_cert`: both servers speak HTTPS, and each new connection first
        waits ``connect_latency`` seconds (a production-like link: every new connection costs a round trip before its
        TLS handshake; ``latency`` still applies to every request). ``connections`` counts accepted connections per host."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.tls = tls
        self.connect_latency = connect_latency
        self.connections = {"hub": 0, "cdn": 0}
        real = mode == "hub"
        self.mode = mode
        self.compress = real  # gzip JSON/text answers over COMPRESS_MIN bytes when the request accepts gzip
        self.chunked = real  # those answers (and API answers) chunked, without Content-Length
        self.weak_etags = real  # ETag: W/"..." on text files
        self.tree_page = 1000 if real else None  # entries per tree listing page, with Link rel="next" (the Hub's 1,000)
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.log: list[Logged] = []
        self.faults: list[Fault] = []
        self.latency = 0.0
        self.redirect_lfs = True
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0  # handlers still running: a request is logged only when its handler ends
        self.hub = _Server(self, "hub", "127.0.0.1")
        self.cdn = _Server(self, "cdn", "127.0.0.2" if real else "127.0.0.1")
        self.url = self.hub.url
        self.cdn_url = self.cdn.url

    # -- setup
    def add(self, repo_id: str, files: dict[str, bytes | Virtual], *, sha: str | None = None, **kw) -> Repo:
        repo = Repo(files=dict(files), sha=sha or sha_of(repo_id + str(sorted(files))), **kw)
        self.repos[repo_id] = repo
        return repo

    def fault(self, match: str, action: str, times: int = 1, **kw) -> Fault:
        f = Fault(match, action, times, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    def close(self) -> None:
        self.hub.close()
        self.cdn.close()

    # -- measurements
    def settled(self, timeout: float = 5.0) -> list[Logged]:
        """The log once every handler has finished: the client can have its whole answer before the server thread
        that sent it has logged it (bounded wait, so a stalled-body fault cannot hang a test)."""
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout)
            return list(self.log)

    def requests(self, host: str | None = None, path: str | None = None) -> list[Logged]:
        return [r for r in self.settled() if (host is None or r.host == host) and (path is None or re.search(path, r.path))]

    def round_trips(self) -> int:
        """The longest chain of requests each started after the previous one ended: sequential round trips."""
        reqs = sorted(self.settled(), key=lambda r: r.start)
        depth: list[int] = []
        for i, r in enumerate(reqs):
            before = [depth[j] for j in range(i) if reqs[j].end <= r.start]
            depth.append(1 + max(before, default=0))
        return max(depth, default=0)

    # -- internals used by the handler
    def _take_fault(self, host: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.host == host and re.search(f.match, path):
                    f.times -= 1
                    return f
        return None

    def _resolve(self, repo: Repo, rev: str) -> tuple[str, dict] | None:
        if rev == "main" or rev == repo.sha:
            return repo.sha, repo.files
        if rev in repo.branches:
            sha = repo.branches[rev]
            return sha, repo.commits.get(sha, repo.files)
        if rev in repo.commits:
            return rev, repo.commits[rev]
        return None


class _Quiet(ThreadingHTTPServer):
    """A client closing a connection early (as ckptcount does on purpose) is not an error worth a traceback on stderr,
    which CliRunner would capture into the output under test. With TLS, the handshake is done in the connection's own
    thread (after the connect latency), never in the accepting one."""

    ssl_context = None

    def get_request(self):
        sock, address = super().get_request()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        pass


class _Server:
    def __init__(self, owner: HubServer, host: str, address: str):
        handler = type("Handler", (_Handler,), {"owner": owner, "host_kind": host})
        self.httpd = _Quiet((address, 0), handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if owner.tls is not None:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*map(str, owner.tls))
            self.httpd.ssl_context = ctx
            scheme = "https"
        self.url = f"{scheme}://{address}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as real front ends send (nginx's `tcp_nodelay on` is its default). http.server writes the status
    # and headers, then the body, in separate sends: with Nagle's algorithm on, a short body waited for the client's
    # delayed ACK of the headers (40 ms on Linux), so a 404 or a config.json took latency + 40 ms.
    disable_nagle_algorithm = True
    owner: HubServer
    host_kind: str

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        """A new connection: counted, delayed by the connect latency, then (TLS) its handshake."""
        with self.owner._lock:
            self.owner.connections[self.host_kind] += 1
        if self.owner.connect_latency:
            time.sleep(self.owner.connect_latency)
        if self.owner.tls is not None:
            try:
                self.request.do_handshake()
            except (OSError, ValueError):
                self.request.close()
        super().setup()

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    # -- plumbing
    def _handle(self, method: str) -> None:
        start = time.monotonic()
        with self.owner._lock:
            self.owner._inflight += 1
        self._status, self._sent, self._encoding = 0, 0, None
        path = urlparse(self.path).path
        try:
            if self.owner.latency:
                time.sleep(self.owner.latency)
            fault = self.owner._take_fault(self.host_kind, path)
            if fault and fault.action == "sleep":
                time.sleep(fault.seconds)
                fault = None
            if fault and fault.action == "status":
                self._reply(fault.status, b"injected", headers=fault.headers)
            elif fault and fault.action == "body":
                self._reply(fault.status if fault.status != 503 else 200, fault.body, headers=fault.headers, content_type="application/json")
            elif self.host_kind == "cdn":
                self._cdn(method, path, fault)
            else:
                self._hub(method, path, fault)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            with self.owner._lock:
                self.owner.log.append(
                    Logged(
                        self.host_kind, method, path, self.headers.get("Range"), "Authorization" in self.headers, self._status, start,
                        time.monotonic(), self._sent, {k.lower(): v for k, v in self.headers.items()}, self._encoding,
                    )
                )
                self.owner._inflight -= 1
                self.owner._idle.notify_all()

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "text/plain", head: bool = False, cdn_like: bool = False) -> None:
        """One whole answer. ``cdn_like``: an answer the real Hub's CDN front may compress and chunk (API and text)."""
        headers = dict(headers or {})
        chunked = False
        if cdn_like:
            headers.setdefault("Vary", "Origin,accept-encoding")
            if self.owner.mode == "hub":
                headers.setdefault("X-Cache", "Hit from cloudfront")
            body, headers = self._maybe_gzip(body, headers)
            chunked = self.owner.chunked
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        if chunked:
            for i in range(0, len(body), 16384):  # several chunks, as a proxy relays them
                self._chunk(body[i : i + 16384])
            self.wfile.write(b"0\r\n\r\n")
        elif body:
            self.wfile.write(body)
            self._sent = len(body)

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
            self._sent += len(data)

    def _maybe_gzip(self, body: bytes, headers: dict) -> tuple[bytes, dict]:
        """gzip as CloudFront does: only when asked, only for bodies of COMPRESS_MIN bytes and more, never a range."""
        accepts = [c.split(";")[0].strip().lower() for c in (self.headers.get("Accept-Encoding") or "").split(",")]
        if self.owner.compress and "gzip" in accepts and len(body) >= COMPRESS_MIN and "Range" not in self.headers:
            self._encoding = "gzip"
            return gzip.compress(body, mtime=0), {**headers, "Content-Encoding": "gzip"}
        return body, headers

    def _json(self, obj, headers: dict | None = None) -> None:
        self._reply(200, json.dumps(obj).encode(), headers, "application/json", cdn_like=True)

    def _error(self, status: int, code: str | None, message: str, head: bool = False, extra: dict | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._reply(status, json.dumps({"error": message}).encode(), headers, "application/json", head=head)

    def _authorized(self, repo: Repo) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.owner.token}"

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.owner.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(repo)):
            # The Hub answers 401 RepoNotFound without a token, 404 with one: it never confirms a private repo exists.
            status = 404 if "Authorization" in self.headers else 401
            self._error(status, "RepoNotFound", "Repository not found", head)
            return None
        if repo.gated and not self._authorized(repo):
            self._error(401 if "Authorization" not in self.headers else 403, "GatedRepo", "Access to this model is restricted", head)
            return None
        return repo

    # -- the Hub
    def _hub(self, method: str, path: str, fault: Fault | None) -> None:
        head = method == "HEAD"
        if path == "/api/agent-harnesses":
            return self._json({"standardEnvVars": [], "harnesses": {}})
        m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?$", path)
        if m:
            repo = self._repo(m.group(1))
            if repo is None:
                return
            rev = unquote(m.group(3) or "main")
            got = self.owner._resolve(repo, rev)
            if got is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            sha, files = got
            query = parse_qs(urlparse(self.path).query)
            if m.group(2) == "tree":
                prefix = unquote((m.group(4) or "").strip("/"))
                rec = query.get("recursive", ["false"])[0].lower() == "true"
                out = []
                for p, c in sorted(files.items()):
                    if prefix and not p.startswith(prefix + "/"):
                        continue
                    rest = p[len(prefix) + 1 :] if prefix else p
                    if "/" in rest and not rec:
                        continue
                    size = _size(c)
                    entry = {"type": "file", "oid": sha_of(p), "size": size, "path": p}
                    if p.endswith(LFS_SUFFIXES):
                        entry["lfs"] = {"oid": hashlib.sha256(p.encode()).hexdigest(), "size": size, "pointerSize": 134}
                    out.append(entry)
                page = self.owner.tree_page
                if page is None:
                    return self._json(out)
                # Paginated as the Hub does (huggingface_hub follows Link rel="next"): ?cursor= is an opaque position.
                at = int(query.get("cursor", ["0"])[0] or 0)
                link = {}
                if at + page < len(out):
                    others = {k: v for k, v in query.items() if k != "cursor"}
                    qs = "&".join(f"{k}={quote(v[0])}" for k, v in others.items())
                    url = f"{self.owner.url}{path}?{qs + '&' if qs else ''}cursor={at + page}"
                    link = {"Link": f'<{url}>; rel="next"'}
                return self._json(out[at : at + page], link)
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for p, c in sorted(files.items()):
                s = {"rfilename": p}
                if blobs:
                    s["size"] = _size(c) if not p.endswith(LFS_SUFFIXES) else 134
                    s["blobId"] = sha_of(p)
                    if p.endswith(LFS_SUFFIXES):
                        s["lfs"] = {"sha256": hashlib.sha256(p.encode()).hexdigest(), "size": _size(c), "pointerSize": 134}
                siblings.append(s)
            return self._json({"id": m.group(1), "modelId": m.group(1), "sha": sha, "private": repo.private, "gated": repo.gated, "siblings": siblings})
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            repo = self._repo(m.group(1), head)
            if repo is None:
                return
            rev, file = unquote(m.group(2)), unquote(m.group(3))
            got = self.owner._resolve(repo, rev)
            if got is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            sha, files = got
            if file not in files:
                # The Hub names the commit on this 404 too (huggingface_hub caches ``.no_exist/<X-Repo-Commit>/<file>``
                # from it in ``hf_hub_download``).
                return self._error(404, "EntryNotFound", f"{file} does not exist on {rev}", head, {"X-Repo-Commit": sha})
            content = files[file]
            lfs = file.endswith(LFS_SUFFIXES)
            etag = f'"{sha_of(sha + file)}"'
            if not lfs and self.owner.weak_etags:
                etag = "W/" + etag  # the real Hub's text files (through CloudFront) carry weak ETags
            common = {"X-Repo-Commit": sha, "ETag": etag, "Accept-Ranges": "bytes"}
            if lfs and self.owner.redirect_lfs and (fault is None or fault.action != "ignore-range"):
                # LFS: redirect to the CDN host with a signed-looking URL, as the Hub does (the token must not follow).
                # A HEAD stops here too: huggingface_hub reads the size and ETag off this 302 (X-Linked-*).
                location = f"{self.owner.cdn_url}/repos/{quote(m.group(1))}/{sha}/{quote(file)}?X-Signature=abc"
                headers = {**common, "Location": location, "X-Linked-Size": str(_size(content)), "X-Linked-Etag": etag}
                if self.owner.mode == "hub":
                    headers["X-Xet-Hash"] = hashlib.sha256(b"xet" + file.encode()).hexdigest()
                return self._reply(302, b"", headers, head=head)
            return self._serve(content, common, head, fault, text=not lfs)
        return self._error(404, None, f"no route {path}", head)

    # -- the CDN
    def _cdn(self, method: str, path: str, fault: Fault | None) -> None:
        m = re.match(r"^/repos/([^/]+)/([^/]+)/([0-9a-f]{40})/(.+)$", path)
        if not m or "X-Signature" not in self.path:
            return self._error(403, None, "bad signature", method == "HEAD")
        repo = self.owner.repos.get(unquote(m.group(1)) + "/" + unquote(m.group(2)))
        files = None
        if repo is not None:
            files = repo.files if m.group(3) == repo.sha else repo.commits.get(m.group(3))
        file = unquote(m.group(4))
        if not files or file not in files:
            return self._error(404, None, "no such object", method == "HEAD")
        self._serve(files[file], {"ETag": f'"{sha_of(file)}"', "Accept-Ranges": "bytes"}, method == "HEAD", fault)

    def _serve(self, content: bytes | Virtual, headers: dict, head: bool, fault: Fault | None, text: bool = False) -> None:
        size = _size(content)
        rng = self.headers.get("Range")
        ignore = fault is not None and fault.action == "ignore-range"
        if text and (not rng or ignore) and (fault is None or fault.action in ("headers", "ignore-range")):
            # A whole text file: what the CDN front compresses and chunks (faults that cut bodies use the plain path)
            body = content.chunk(0, size) if isinstance(content, Virtual) else content
            if fault is not None and fault.action == "headers":
                headers = {**headers, **fault.headers}
            return self._reply(200, body, headers, "application/octet-stream", head=head, cdn_like=True)
        start, end = 0, size  # end exclusive
        status = 200
        if rng and not ignore:
            mm = re.match(r"^bytes=(\d+)-(\d*)$", rng.strip())
            if not mm:
                return self._reply(416, b"", {"Content-Range": f"bytes */{size}"})
            start = int(mm.group(1))
            end = min(size, int(mm.group(2)) + 1) if mm.group(2) else size
            if start >= size:
                return self._reply(416, b"", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
        if fault is not None and fault.action == "headers":  # a hostile server: its own headers on a good answer
            headers = {**headers, **fault.headers}
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        reset_at = None
        if fault is not None and fault.action in ("reset", "truncate", "slow-body"):
            reset_at = start + max(1, (end - start) // 2)
        pos = start
        while pos < end:
            stop = min(end, pos + 65536)
            if reset_at is not None and stop >= reset_at:
                stop = reset_at
            data = content.chunk(pos, stop) if isinstance(content, Virtual) else content[pos:stop]
            self.wfile.write(data)
            self._sent += len(data)
            pos = stop
            if reset_at is not None and pos >= reset_at and fault.action == "truncate":
                # A clean close (FIN) after half the announced Content-Length: a truncated body, not a reset.
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reset_at is not None and pos >= reset_at and fault.action == "slow-body":
                # Half the body, then silence for ``seconds``: a stalled transfer (the client's read timeout fires).
                self.wfile.flush()
                time.sleep(fault.seconds)
                reset_at = None
                continue
            if reset_at is not None and pos >= reset_at:
                self.wfile.flush()
                # Drop the connection mid-body: RST, so the client sees a broken read, not a clean end.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.close_connection = True
                self.connection.close()
                return


def _size(content: bytes | Virtual) -> int:
    return content.size if isinstance(content, Virtual) else len(content)
