"""Audit a Hugging Face Hub repo from its headers, with HTTP range requests: the same Checkpoint as the local path.

Targets: ``org/name`` (optionally ``org/name@revision``), ``hf://org/name[@revision][/sub/folder]``, and
``https://<endpoint>/org/name/resolve/<revision>/<path>`` (also ``/blob/`` and ``/tree/``). The endpoint is
``HF_ENDPOINT`` (read when the audit runs), or the host of a URL that is not huggingface.co.

The request plan, for a revision never seen before (each step's requests start together; docs/hub.md has the
measurements):

1. ``config.json``, ``model.safetensors.index.json`` (or the ``*.index.json`` named by the target) and the first
   :data:`~ckptcount.sources.http.FIRST_BLOCK` bytes of ``model.safetensors``, at the revision;
2. an index answered: it is what :func:`ckptcount.targets.local.choose` picks whenever it exists, so no listing is fetched.
   The commit is the index's ``X-Repo-Commit`` (config.json is fetched again at it only if it came from another
   commit), the shard headers are fetched at the commit, all in parallel, and each shard's size is the total of its
   ``Content-Range``. Requests: shards + 3, the single file's probe being a 404 (each shard also costs its 302 when
   the Hub redirects to a CDN); round trips: 2, or 3 with the CDN hop. What the listing would add is not known:
   formats present but not counted, shards the index does not name, their sizes in the preflight (docs/hub.md,
   "Sharded repos without the listing");
3. no index (single file, ``.bin``, GGUF, unindexed shards, a repo with no checkpoint; also an index probe that
   failed, or a server that names no commit): the listing with sizes
   (``/api/models/<repo>/revision/<sha>?blobs=true``) starts as soon as the index's 404 is in, at the commit it
   named (``X-Repo-Commit``; the revision itself if it named none), while the single file's probe may still be on
   its CDN hop; then ``choose`` decides exactly as for a directory. A probed single file is finished (at most one
   more request for a header larger than the block): 5 requests with the CDN hop, 2 round trips.

Why the single-file probe for every repo: without it a single-file repo learns it has no index first and costs a
third round trip with the CDN hop (issue 3: at most 2); with it a sharded repo pays one 404 more, in parallel (issue
7 asks for shards + at most 2: missed by one request, on purpose; docs/hub.md).

A target naming a weight file fetches the listing, ``config.json`` and the file's first block together. Every file
is read through :func:`ckptcount.formats.dispatch.read_file` on an :class:`~ckptcount.sources.http.HttpFile`, so every format
the readers know works remotely, and the result goes through :func:`ckptcount.targets.local.assemble`, like a local
directory. What the readers consumed is cached per commit (:mod:`ckptcount.targets.cache`): a second audit of a branch makes
one request (the listing, to resolve it), of a commit sha none, and with ``HF_HUB_OFFLINE=1`` none (a repo never
audited is then read from huggingface_hub's downloaded copy, if it has one: :meth:`_Hub.downloaded`).
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote, unquote, urlparse

from . import cache
from ..support.gcpause import gc_paused
from ..analysis.config import parse_config
from ..errors import CkptError, TargetNotFound, UnsafePath
from ..formats.dispatch import LAYOUTS, FileRead, format_of, read_file
from .local import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, assemble, choose, parse_index, unreferenced_shards
from ..records import Checkpoint, Finding

DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_HOSTS = frozenset({"huggingface.co", "hf.co", "www.huggingface.co"})
MAX_LISTING_BYTES = 64 * 1024 * 1024
MAX_WORKERS = 16
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID = re.compile(rf"^({_NAME}/{_NAME})(?:@([^\s/]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubTarget:
    repo: str
    revision: str | None
    path: str  # a subfolder or a file inside the repo; "" is the root
    is_file: bool
    endpoint: str


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache() -> Path:
    """huggingface_hub's cache of downloaded repos, as it finds it when the audit runs (``HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else its default): read from the environment here because huggingface_hub reads it once, at
    import."""
    for variable, under in (("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub")):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[variable]))) / under
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_hub_target(target: str) -> bool:
    """Whether ``target`` names something on the Hub (checked only after it was found not to be a local path)."""
    if target.startswith("hf://"):
        return True
    if re.match(r"^https?://", target):
        return True
    m = REPO_ID.match(target)
    if not m:
        return False
    name = m.group(1).rsplit("/", 1)[-1]
    return format_of(name) is None and not name.endswith(".json")


def _is_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return bool(name) and (format_of(name) is not None or name.endswith(".index.json"))


def parse_target(target: str, revision: str | None = None) -> HubTarget:
    """Split a Hub target into repo, revision, path. ``revision`` (--revision) must agree with one in the target."""
    rev_in = None
    ep = endpoint()
    if target.startswith("hf://"):
        rest = target[len("hf://") :].strip("/")
        if rest.startswith(("datasets/", "spaces/", "buckets/")):
            raise TargetNotFound(target, "only model repos are supported")
        if rest.startswith("models/"):
            rest = rest[len("models/") :]
        parts = rest.split("/")
        if len(parts) < 2:
            raise TargetNotFound(target, "expected hf://org/name[@revision][/path]")
        name = parts[1]
        if "@" in name:
            name, rev_in = name.split("@", 1)
            rev_in = unquote(rev_in)
        repo, path = f"{parts[0]}/{name}", "/".join(parts[2:])
    elif re.match(r"^https?://", target):
        u = urlparse(target)
        host = (u.hostname or "").lower()
        if host not in HUB_HOSTS:
            ep = f"{u.scheme}://{u.netloc}"
        parts = [unquote(p) for p in u.path.strip("/").split("/")]
        if len(parts) < 2:
            raise TargetNotFound(target, "expected https://host/org/name[/resolve/<revision>/<path>]")
        repo, path = f"{parts[0]}/{parts[1]}", ""
        if len(parts) > 2:
            if parts[2] not in ("resolve", "blob", "tree") or len(parts) < 4:
                raise TargetNotFound(target, "expected https://host/org/name/resolve/<revision>/<path>")
            rev_in, path = parts[3], "/".join(parts[4:])
    else:
        m = REPO_ID.match(target)
        if not m:
            raise TargetNotFound(target, "not a local path and not a Hub repo id (org/name)")
        repo, rev_in, path = m.group(1), m.group(2), ""
    if not re.match(rf"^{_NAME}/{_NAME}$", repo):
        raise TargetNotFound(target, f"{repo!r} is not a valid repo id")
    if rev_in and revision and rev_in != revision:
        raise TargetNotFound(target, f"names revision {rev_in!r} but --revision is {revision!r}")
    path = path.strip("/")
    _check_path(path, target)
    return HubTarget(repo=repo, revision=revision or rev_in, path=path, is_file=_is_file(path), endpoint=ep)


def _check_path(path: str, where: str) -> None:
    """Hub paths (from the target or an index) are untrusted: plain relative paths that stay in the repo."""
    if not path:
        return
    if path.startswith("/") or "\\" in path or "\x00" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise UnsafePath(where, f"path {path!r} is not a plain relative path inside the repo")


def _folders(listing: dict, prefix: str) -> list[str]:
    """The folders right under ``prefix`` in a listing (file paths), to name them when there is nothing to count."""
    return sorted({p[len(prefix) :].split("/", 1)[0] for p in listing if p.startswith(prefix) and "/" in p[len(prefix) :]})


def _join(folder: str, name: str, where: str) -> str:
    _check_path(name, where)
    return f"{folder}/{name}" if folder else name


class _Hub:
    """One audit of one Hub target."""

    def __init__(self, target: str, t: HubTarget, token: str | None):
        self.target = target
        self.t = t
        self.token = token
        self.rev = t.revision or "main"
        self.folder = posixpath.dirname(t.path) if t.is_file else t.path
        self.client = None
        self.cached = False

    # -- naming
    def where(self, path: str) -> str:
        return f"{self.t.repo}/{path}"

    def url(self, path: str, rev: str) -> str:
        return f"{self.t.endpoint}/{self.t.repo}/resolve/{quote(rev, safe='')}/{quote(path)}"

    # -- network
    def _client(self):
        if self.client is None:
            from ..sources.http import HubClient

            self.client = HubClient(self.t.endpoint, self.token)
        return self.client

    def listing(self, rev: str | None = None) -> tuple[str, dict[str, int | None]]:
        """(commit sha, {path: size}) of every file at ``rev`` (default: the audited revision)."""
        import json

        url = f"{self.t.endpoint}/api/models/{self.t.repo}/revision/{quote(rev or self.rev, safe='')}?blobs=true"
        where = f"{self.t.repo}@{self.rev}" if self.t.revision else self.t.repo
        reply = self._client().get(url, where, limit=MAX_LISTING_BYTES)
        try:
            obj = json.loads(reply.body)
            sha = obj["sha"]
            files = {}
            for s in obj.get("siblings") or []:
                lfs = s.get("lfs") or {}
                size = lfs.get("size", s.get("size"))
                files[s["rfilename"]] = size if isinstance(size, int) else None
        except (ValueError, KeyError, TypeError, AttributeError):
            from ..sources.http import NetworkError

            raise NetworkError(where, "the Hub's repo listing is not the JSON expected (no sha/siblings)") from None
        if not isinstance(sha, str) or not _SHA.match(sha):
            from ..sources.http import NetworkError

            raise NetworkError(where, f"the Hub's listing gives an invalid commit sha {str(sha)[:50]!r}")
        return sha, files

    def small(self, path: str, rev: str, limit: int, missing_ok: bool = True) -> tuple[bytes | None, str | None]:
        """(body, X-Repo-Commit) of a small file; the body is None for a file that does not exist (the Hub's 404
        still names the commit)."""
        reply = self._client().get(self.url(path, rev), self.where(path), limit=limit, missing_ok=missing_ok)
        return (None if reply.status == 404 else reply.body), reply.headers.get("x-repo-commit")

    # -- the audit
    def run(self) -> Checkpoint:
        t = self.t
        known = cache.resolve_ref(t.endpoint, t.repo, self.rev)
        if offline():
            from ..sources.http import OfflineError

            found = self.without_network(known)
            if found is None:
                raise OfflineError(
                    self.target,
                    f"HF_HUB_OFFLINE is set and {t.repo}@{self.rev} has no cached headers and no downloaded copy; audit it once online",
                )
            return found
        from ..sources.http import Unreachable

        try:
            return self.online(known)
        except Unreachable as e:
            # As huggingface_hub does when the Hub cannot be reached: what this machine already has, said in the report
            found = self.without_network(known)
            if found is None:
                raise
            return replace(found, origin=MappingProxyType({**found.origin, "unreachable": e.what}))

    def without_network(self, known: str | None) -> Checkpoint | None:
        """The revision from what this machine has: the headers cached for the commit it last resolved to, else
        huggingface_hub's downloaded copy; None when neither."""
        entry = cache.load(self.t.endpoint, self.t.repo, known, self.folder) if known else None
        if entry is not None:
            return self.replay(entry)
        return self.downloaded()

    def online(self, known: str | None) -> Checkpoint:
        t = self.t
        if known and known == self.rev:  # a commit sha: immutable, no request at all
            entry = cache.load(t.endpoint, t.repo, known, self.folder)
            if entry is not None:
                return self.replay(entry)
        if known:
            # Seen before: resolve the revision first (one request), and only go further if it moved.
            sha, files = self.listing()
            entry = cache.load(t.endpoint, t.repo, sha, self.folder) if sha == known else None
            if entry is not None:
                return self.replay(entry)
            return self.build(sha, files, {})
        return self.build(*self.first_fetch())

    def first_fetch(self) -> tuple[str, dict[str, int | None] | None, dict]:
        """A revision not seen before: (commit sha, the listing or None, what the probes settled), by the plan in the
        module docstring. ``settled`` maps a path to its body (bytes), its :class:`HttpFile`, None (404 at the
        commit), :data:`_STALE` (to fetch again at the commit) or the :class:`NetworkError` that spent its retries."""
        t = self.t
        self._client()  # one client (session, headers, counters) before any thread starts
        pool = ThreadPoolExecutor(max_workers=4)
        try:
            config = _join(self.folder, "config.json", self.target)
            probes: dict = {config: pool.submit(self.small, config, self.rev, MAX_CONFIG_BYTES)}
            if t.is_file and not t.path.endswith(".index.json"):
                # A named weight file: the listing (does it exist, what is next to it), config.json and its first
                # block, all at once.
                listing = pool.submit(self.listing)
                probes[t.path] = self._probe_file(pool, t.path, self.rev)
                _warm_up()  # the requests are in flight: use the wait
                sha, files = listing.result()
                return sha, files, {path: _usable(*_outcome(p), sha) for path, p in probes.items()}
            # Step 1: config.json, the index and the single file's first block, together.
            index = t.path if t.is_file else _join(self.folder, LAYOUTS[0].index, self.target)
            probes[index] = pool.submit(self.small, index, self.rev, MAX_INDEX_BYTES)
            if not t.is_file:
                single = _join(self.folder, LAYOUTS[0].single, self.target)
                probes[single] = self._probe_file(pool, single, self.rev)
            _warm_up()
            body, commit = _outcome(probes[index])
            if isinstance(body, bytes) and commit and _SHA.match(commit):
                # The index is what `local.choose` picks whenever it exists: no listing. The commit is the index's
                # X-Repo-Commit; the shards are fetched at it, their sizes come from Content-Range.
                outcomes = {path: _outcome(p) for path, p in probes.items()}
                return commit, None, {path: _usable(r, c, commit) for path, (r, c) in outcomes.items()}
            # Step 2, no index (or no usable answer): the listing decides what to count, as for a directory; it starts
            # as soon as the index's 404 is in (the single file's probe may still be on its CDN hop), at the commit
            # that 404 named, when it named one.
            rev = commit if commit and _SHA.match(commit) else self.rev
            listing = pool.submit(self.listing, rev)
            outcomes = {path: _outcome(p) for path, p in probes.items()}
            sha, files = listing.result()
            return sha, files, {path: _usable(r, c, sha) for path, (r, c) in outcomes.items()}
        finally:
            pool.shutdown(wait=True)

    def _probe_file(self, pool, path: str, rev: str) -> tuple:
        from ..sources.http import HttpFile

        f = HttpFile(self._client(), self.url(path, rev), path.rsplit("/", 1)[-1], self.where(path))
        return f, pool.submit(f.probe)

    def build(self, sha: str, files: dict[str, int | None] | None, settled: dict) -> Checkpoint:
        """Count the commit ``sha``. ``files`` is the listing; None when the index answered and no listing was fetched:
        then the index is counted (what ``local.choose`` picks whenever it exists), a shard it names that the commit
        lacks is found by its 404, and the sizes come from ``Content-Range``."""
        from ..sources.http import EntryNotFound, HttpFile

        t, folder = self.t, self.folder
        prefix = f"{folder}/" if folder else ""
        listed = files is not None
        here = {p[len(prefix) :]: s for p, s in files.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]} if listed else {}
        findings: list[Finding] = []
        index = weight_map = None
        index_meta: dict = {}
        index_raw = None
        if not listed:
            index, names = (t.path if t.is_file else LAYOUTS[0].index).rsplit("/", 1)[-1], []
        elif t.is_file:
            name = t.path.rsplit("/", 1)[-1]
            if name not in here:
                raise TargetNotFound(self.where(t.path), f"no such file at {self.rev}")
            if name.endswith(".index.json"):
                index, names = name, []
            else:
                names = [name]
        else:
            folders = _folders(files, prefix)
            if not here and not folders:
                raise TargetNotFound(self.target, f"no files under {folder!r}" if folder else "the repository holds no files")
            _, index, names, findings = choose(set(here), self.target, folders)

        def raw(path: str, limit: int) -> bytes | None:
            got = settled.get(path, _STALE)
            if isinstance(got, CkptError):
                raise got
            if got is _STALE or (got is None and listed):  # not probed, stale, or 404 at the branch while the commit lists it
                got, _ = self.small(path, sha, limit, missing_ok=not listed)
            return got

        if index is not None:
            ipath = prefix + index
            index_raw = raw(ipath, MAX_INDEX_BYTES)
            if index_raw is None:
                raise TargetNotFound(self.where(ipath), "listed but could not be fetched")
            weight_map, index_meta = parse_index(index_raw, self.where(ipath))
            names = sorted(set(weight_map.values()))
            for n in names:
                _check_path(n, self.where(ipath))
                if "/" in n:
                    raise UnsafePath(self.where(ipath), f"shard {n!r} is not a file next to the index")
                if listed and n not in here:
                    raise TargetNotFound(self.where(ipath), f"names shard {n!r}, which the repo does not hold at {sha[:12]}")
            findings.extend(unreferenced_shards(here, names, index))

        sources = {}
        for n in names:
            path = prefix + n
            probed = settled.get(path, _STALE)
            if isinstance(probed, CkptError):
                raise probed
            if isinstance(probed, HttpFile) and probed._size in (None, here.get(n)):
                if probed._size is None:
                    probed._size = here.get(n)
                sources[n] = probed
            else:
                sources[n] = HttpFile(self._client(), self.url(path, sha), n, self.where(path), size=here.get(n))

        config_raw = None
        if not listed or "config.json" in here:
            config_raw = raw(prefix + "config.json", MAX_CONFIG_BYTES)
        try:
            reads = _read_all(sources)
        except EntryNotFound as e:
            missing = next((n for n, s in sources.items() if s.name == e.where), None)
            if listed or missing is None:
                raise
            raise TargetNotFound(self.where(prefix + index), f"names shard {missing!r}, which the repo does not hold at {sha[:12]}") from None
        if not listed:  # what the listing would have said about the files read: the record kept for replays and preflight
            here = {index: len(index_raw), **({"config.json": len(config_raw)} if config_raw is not None else {}), **{n: s.size() for n, s in sources.items()}}
            files = {prefix + n: size for n, size in sorted(here.items())}
        for n, src in sources.items():
            if src.range_ignored:
                findings.append(Finding("range-ignored", f"{src.name}: the server ignored Range and sent the whole file; read {src.bytes_read} bytes, then closed the connection"))
        ck = self.finish(reads, config_raw, index, weight_map, index_meta, findings, here, sha, listed=listed)
        cache.save(
            t.endpoint,
            t.repo,
            sha,
            folder,
            listing=files,
            config=config_raw,
            index=index_raw,
            files={n: {"size": s.size(), "segments": [(o, s.view(o, ln)) for o, ln in cache.merge_ranges(s.served)]} for n, s in sources.items()},
            listed=listed,
        )
        cache.save_ref(t.endpoint, t.repo, self.rev, sha)
        return ck

    def finish(self, reads, config_raw, index, weight_map, index_meta, findings, here, sha, listed: bool = True) -> Checkpoint:
        folder = self.folder
        prefix = f"{folder}/" if folder else ""
        config = None
        if config_raw is not None:
            config = parse_config(config_raw, self.where(prefix + "config.json"))
        ck = assemble(
            self.target,
            reads,
            config=config,
            config_file="config.json" if config_raw is not None else None,
            index=index,
            weight_map=weight_map,
            index_meta=index_meta,
            findings=findings,
        )
        c = self.client.counters if self.client else None
        origin = {
            "endpoint": self.t.endpoint,
            "repo": self.t.repo,
            "revision": self.rev,
            "sha": sha,
            "path": self.t.path,
            "cached": self.cached,
            "requests": c.requests if c else 0,
            "bytes_received": c.bytes if c else 0,
            "listing": MappingProxyType(dict(here)),
            "listed": listed,  # False: `listing` names only the files read (a sharded repo read without the listing)
        }
        return replace(ck, origin=MappingProxyType(origin))

    def downloaded(self) -> Checkpoint | None:
        """Without the network (offline, or the Hub unreachable) and without cached headers: this revision as
        huggingface_hub downloaded it into its own cache (``hf download``, ``from_pretrained``), counted from those
        files as a local folder is; None when it has none.

        The snapshot is found as huggingface_hub finds it offline: ``<hub cache>/models--org--name/refs/<revision>``
        names the commit (a commit sha names itself) and ``snapshots/<commit>/`` holds the files. A file or folder of
        the target that was not downloaded is None too (a partial download that lacks a shard fails on that shard)."""
        from huggingface_hub.file_download import repo_folder_name

        from ..errors import ReadError
        from .local import load_local
        from ..sources.files import entries, inside, ref_commit

        t = self.t
        repo = hub_cache() / repo_folder_name(repo_id=t.repo, repo_type="model")
        try:
            commit = ref_commit(repo, self.rev, str(repo))
        except ReadError:  # an unreadable ref: as if there were no copy
            return None
        snapshot = inside(repo / "snapshots", commit, f"{repo}/refs/{self.rev}") if commit else None
        if snapshot is None or not snapshot.is_dir():
            return None
        local = snapshot / t.path if t.path else snapshot  # t.path: a plain relative path (parse_target)
        if not os.path.exists(local):
            return None
        ck = load_local(str(local))
        folder = local if local.is_dir() else local.parent
        listing = {e.name: e.stat().st_size for e in entries(folder, str(folder)) if e.is_file()}
        origin = {
            "endpoint": t.endpoint,
            "repo": t.repo,
            "revision": self.rev,
            "sha": commit,
            "path": t.path,
            "cached": False,
            "requests": 0,
            "bytes_received": 0,
            "listing": MappingProxyType(listing),
            "listed": True,
            "local_copy": str(local),
        }
        return replace(ck, target=self.target, origin=MappingProxyType(origin))

    def replay(self, entry: dict) -> Checkpoint:
        """Rebuild the Checkpoint from a cache entry: same bytes, same readers; a miss falls back to the network."""
        self.cached = True
        sha = entry["sha"]
        folder = self.folder
        prefix = f"{folder}/" if folder else ""
        files = entry["listing"]
        here = {p[len(prefix) :]: s for p, s in files.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]}
        findings: list[Finding] = []
        index = weight_map = None
        index_meta: dict = {}
        if self.t.is_file:
            name = self.t.path.rsplit("/", 1)[-1]
            index, names = (name, []) if name.endswith(".index.json") else (None, [name])
        else:
            _, index, names, findings = choose(set(here), self.target, _folders(files, prefix))
        if index is not None:
            if entry["index"] is None:  # the entry lacks what its listing says was read
                return self._refetch(sha)
            weight_map, index_meta = parse_index(entry["index"], self.where(prefix + index))
            names = sorted(set(weight_map.values()))
            findings.extend(unreferenced_shards(here, names, index))
        reads = {}
        for n in names:
            f = entry["files"].get(n)
            if f is None:
                return self._refetch(sha)
            src = cache.CachedFile(self.where(prefix + n), f["size"], f["segments"])
            try:
                reads[n] = read_file(src, n, self.where(prefix + n))
            except cache.CacheMiss:
                return self._refetch(sha)
        return self.finish(reads, entry["config"], index, weight_map, index_meta, findings, here, sha, listed=entry.get("listed", True) is not False)

    def _refetch(self, sha: str) -> Checkpoint:
        if offline():
            from ..sources.http import OfflineError

            raise OfflineError(self.target, "HF_HUB_OFFLINE is set and the cached headers are incomplete")
        self.cached = False
        sha, files = self.listing()
        return self.build(sha, files, {})


def _warm_up() -> None:
    """Import, while the first requests are in flight, what the rest of a Hub audit imports anyway (the analysis
    modules ``api.analyse`` imports on first use, and the preflight every Hub report gets): start-up CPU moved into
    the network wait."""
    from ..analysis import classify
    from ..analysis import count
    from ..analysis import moe
    from ..analysis import preflight
    from ..analysis import quant
    from ..analysis import tying  # noqa: F401


class _Stale:
    pass


_STALE = _Stale()


def _outcome(probe) -> tuple:
    """(result, X-Repo-Commit) of a probe: the body (bytes) or the :class:`HttpFile`, None for a 404, or the
    :class:`CkptError` it ended with."""
    try:
        if isinstance(probe, tuple):
            f, fut = probe
            found = fut.result()
            return (f if found else None), f.commit
        return probe.result()
    except CkptError as e:
        return e, None


def _usable(result, commit: str | None, sha: str):
    """What a probe made at a branch name is worth at the commit ``sha``: itself if it came from that commit, else
    :data:`_STALE` (fetched again at the commit if needed). A :class:`NetworkError` already spent every retry: kept, and
    raised only if the file is needed; a probe that failed otherwise is redone at the commit."""
    from ..sources.http import NetworkError

    if isinstance(result, NetworkError):
        return result
    if isinstance(result, CkptError):
        return _STALE
    return result if commit in (None, sha) else _STALE


PROGRESS_MIN_FILES = 8  # fewer shards finish before a bar would be worth drawing


def show_progress(files: int) -> bool:
    """A progress bar on stderr only for many shards, and only when stderr is a terminal (never when piped)."""
    return files >= PROGRESS_MIN_FILES and sys.stderr.isatty() and "CKPTCOUNT_NO_PROGRESS" not in os.environ


def _read_all(sources: dict, progress_stream=None) -> dict[str, FileRead]:
    """Read every shard header, fetching MAX_WORKERS at a time. ``progress_stream``: where a bar is drawn (stderr when
    :func:`show_progress` says so); stdout is never touched.

    The worker threads only fetch: a safetensors shard on the network (a source with ``prefetch_header``) has its
    whole header fetched by a worker and is parsed here, in this one thread, as each fetch completes; other formats and
    other sources are read by their reader in the worker. Parsing in the workers made them alternate between a request
    and a parse, holding the GIL the others needed to receive their replies: 16 parsing threads turned the requests
    into lockstep waves (wait, then all parse), and the 163-shard fetch took 1.5-1.9 s instead of ~0.7 s. Errors are
    raised in the order of ``sources``, whatever order the files complete in, so the error reported is deterministic.

    The cyclic garbage collector is paused while the headers are fetched and parsed (and restored after): the parse
    allocates ~10 container objects per tensor and none of them form cycles, yet every 700 allocations start a
    collection that walks the growing heap; for 90k tensors that was 0.3 of 1.0 s of parse CPU here.
    """
    if len(sources) <= 1:
        with gc_paused():
            return {n: read_file(s, n, s.name) for n, s in sources.items()}
    if progress_stream is None and show_progress(len(sources)):
        progress_stream = sys.stderr
    bar = None
    if progress_stream is not None:
        from rich.console import Console
        from rich.progress import Progress

        bar = Progress(console=Console(file=progress_stream, force_terminal=True), transient=True)
        task = bar.add_task("shard headers", total=len(sources))
        bar.start()
    reads: dict[str, FileRead] = {}
    errors: dict[str, BaseException] = {}
    try:
        with gc_paused(), ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(sources))) as pool:
            futures = {pool.submit(_fetch_or_read, n, s): n for n, s in sources.items()}
            for fut in as_completed(futures):
                n = futures[fut]
                try:
                    got = fut.result()
                    reads[n] = got if got is not None else read_file(sources[n], n, sources[n].name)
                except Exception as e:  # noqa: BLE001  (re-raised below, in the order of sources)
                    errors[n] = e
                if bar is not None:
                    bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    for n in sources:
        if n in errors:
            raise errors[n]
    return {n: reads[n] for n in sources}


def _fetch_or_read(name: str, source) -> FileRead | None:
    """In a worker: fetch a network safetensors header (None: parse it in the calling thread), or read any other file."""
    prefetch = getattr(source, "prefetch_header", None)
    if prefetch is not None and (format_of(name) or "safetensors") == "safetensors":
        prefetch()
        return None
    return read_file(source, name, source.name)


def load_hub(target: str, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """Read the headers of a Hub target (repo id, hf:// path or resolve URL). Raises :class:`CkptError`."""
    t = parse_target(target, revision)
    return _Hub(target, t, token).run()
