"""Audit a Hugging Face Hub repo from its headers, with HTTP range requests: the same Checkpoint as the local path.

What a target names is :mod:`.hub_target`'s question; the shard headers are fetched by :func:`.shards.read_all`.

The request plan, for a revision never seen before (each step's requests start together; docs/hub.md has the
measurements):

1. ``config.json``, ``model.safetensors.index.json`` (or the ``*.index.json`` named by the target) and the first
   :data:`~ckptcount.sources.http.FIRST_BLOCK` bytes of ``model.safetensors``, at the revision;
2. an index answered: it is what :func:`ckptcount.targets.local.choose` picks whenever it exists, so no listing is fetched.
   The commit is the index's ``X-Repo-Commit`` (config.json is fetched again at it only if it came from another
   commit), the shard headers are fetched at the commit, all in parallel, and each shard's size is the total of its
   ``Content-Range``; beside them ``modules.json`` at the commit (a sentence-transformers model whose root module is
   sharded: its other modules are then planned from the listing, by api). Requests: shards + 4, the single file's
   probe and ``modules.json`` being 404s (each shard also costs its 302 when
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

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import MappingProxyType
from urllib.parse import quote

from ..analysis.config import parse_config
from ..errors import CkptError, TargetNotFound, UnsafePath
from ..formats.base import LAYOUTS, is_index
from ..formats.dispatch import read_file
from ..records import Checkpoint, Finding
from ..sources.http import EntryNotFound, HttpFile, HubClient, NetworkError, OfflineError, Unreachable
from . import cache
from .hub_target import SHA, HubTarget, check_path, folders, join, offline, parse_target
from .local import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, assemble, choose, parse_index, unreferenced_shards
from .hub_copy import downloaded
from .repo import MAX_LAYOUT_JSON
from .shards import read_all

MAX_LISTING_BYTES = 64 * 1024 * 1024


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
        self.modules_probe = None  # modules.json, fetched beside the shard headers of a repo read without its listing
        self.seen: tuple[str, dict] | None = None  # (commit, the repo's listing) once known: a plan of its layout reuses it

    # -- naming
    def where(self, path: str) -> str:
        return f"{self.t.repo}/{path}"

    def url(self, path: str, rev: str) -> str:
        return f"{self.t.endpoint}/{self.t.repo}/resolve/{quote(rev, safe='')}/{quote(path)}"

    # -- network
    def _client(self):
        if self.client is None:
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
            raise NetworkError(where, "the Hub's repo listing is not the JSON expected (no sha/siblings)") from None
        if not isinstance(sha, str) or not SHA.match(sha):
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
            found = self.without_network(known)
            if found is None:
                raise OfflineError(
                    self.target,
                    f"HF_HUB_OFFLINE is set and {t.repo}@{self.rev} has no cached headers and no downloaded copy; audit it once online",
                )
            return found
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

    def run_listed(self, sha: str, files: dict[str, int | None]) -> Checkpoint:
        """This target at the commit ``sha``, whose listing ``files`` is already known (a part of a planned repo,
        :mod:`.hub_parts`): its cached headers, else ``config.json`` and the index or weight file that ``choose``
        picks, probed together, then counted as :meth:`build` does; no second listing."""
        t = self.t
        entry = cache.load(t.endpoint, t.repo, sha, self.folder)
        if entry is not None:  # the entry of this folder may hold other files (the plan's first read): then read anew
            found = self.replay(entry, on_miss=lambda sha: None)
            if found is not None:
                return found
            self.cached = False
        prefix = f"{self.folder}/" if self.folder else ""
        here = _top(files, prefix)
        index, names, _ = self._layout(files, here, prefix)
        self._client()
        probes: dict = {}
        with ThreadPoolExecutor(max_workers=3) as pool:
            if "config.json" in here:
                probes[prefix + "config.json"] = pool.submit(self.small, prefix + "config.json", sha, MAX_CONFIG_BYTES)
            if index is not None:
                probes[prefix + index] = pool.submit(self.small, prefix + index, sha, MAX_INDEX_BYTES)
            elif len(names) == 1:
                probes[prefix + names[0]] = self._probe_file(pool, prefix + names[0], sha)
            settled = {path: _usable(*_outcome(p), sha) for path, p in probes.items()}
        return self.build(sha, files, settled)

    def first_fetch(self) -> tuple[str, dict[str, int | None] | None, dict]:
        """A revision not seen before: (commit sha, the listing or None, what the probes settled), by the plan in the
        module docstring. ``settled`` maps a path to its body (bytes), its :class:`HttpFile`, None (404 at the
        commit), :data:`_STALE` (to fetch again at the commit) or the :class:`NetworkError` that spent its retries."""
        t = self.t
        self._client()  # one client (session, headers, counters) before any thread starts
        pool = ThreadPoolExecutor(max_workers=4)
        try:
            config = join(self.folder, "config.json", self.target)
            probes: dict = {config: pool.submit(self.small, config, self.rev, MAX_CONFIG_BYTES)}
            if t.is_file and not is_index(t.path):
                # A named weight file: the listing (does it exist, what is next to it), config.json and its first
                # block, all at once.
                listing = pool.submit(self.listing)
                probes[t.path] = self._probe_file(pool, t.path, self.rev)
                _warm_up()  # the requests are in flight: use the wait
                sha, files = listing.result()
                return sha, files, {path: _usable(*_outcome(p), sha) for path, p in probes.items()}
            # Step 1: config.json, the index and the single file's first block, together.
            index = t.path if t.is_file else join(self.folder, LAYOUTS[0].index, self.target)
            probes[index] = pool.submit(self.small, index, self.rev, MAX_INDEX_BYTES)
            if not t.is_file:
                single = join(self.folder, LAYOUTS[0].single, self.target)
                probes[single] = self._probe_file(pool, single, self.rev)
            _warm_up()
            body, commit = _outcome(probes[index])
            if isinstance(body, bytes) and commit and SHA.match(commit):
                # The index is what `local.choose` picks whenever it exists: no listing. The commit is the index's
                # X-Repo-Commit; the shards are fetched at it, their sizes come from Content-Range.
                outcomes = {path: _outcome(p) for path, p in probes.items()}
                if not t.is_file:
                    self.modules_probe = _aside(self.small, join(self.folder, "modules.json", self.target), commit, MAX_LAYOUT_JSON)
                return commit, None, {path: _usable(r, c, commit) for path, (r, c) in outcomes.items()}
            # Step 2, no index (or no usable answer): the listing decides what to count, as for a directory; it starts
            # as soon as the index's 404 is in (the single file's probe may still be on its CDN hop), at the commit
            # that 404 named, when it named one.
            rev = commit if commit and SHA.match(commit) else self.rev
            listing = pool.submit(self.listing, rev)
            outcomes = {path: _outcome(p) for path, p in probes.items()}
            sha, files = listing.result()
            return sha, files, {path: _usable(r, c, sha) for path, (r, c) in outcomes.items()}
        finally:
            pool.shutdown(wait=True)

    def _probe_file(self, pool, path: str, rev: str) -> tuple:
        f = HttpFile(self._client(), self.url(path, rev), path.rsplit("/", 1)[-1], self.where(path))
        return f, pool.submit(f.probe)

    def build(self, sha: str, files: dict[str, int | None] | None, settled: dict) -> Checkpoint:
        """Count the commit ``sha``. ``files`` is the listing; None when the index answered and no listing was fetched:
        then the index is counted (what ``local.choose`` picks whenever it exists), a shard it names that the commit
        lacks is found by its 404, and the sizes come from ``Content-Range``."""
        prefix = f"{self.folder}/" if self.folder else ""
        listed = files is not None
        if listed:
            self.seen = (sha, files)
        here = _top(files, prefix) if listed else {}
        index, names, findings = self._layout(files, here, prefix)

        def raw(path: str, limit: int) -> bytes | None:
            got = settled.get(path, _STALE)
            if isinstance(got, CkptError):
                raise got
            if got is _STALE or (got is None and listed):  # not probed, stale, or 404 at the branch while the commit lists it
                got, _ = self.small(path, sha, limit, missing_ok=not listed)
            return got

        weight_map, index_meta, index_raw = None, {}, None
        if index is not None:
            index_raw, weight_map, index_meta, names = self._index(raw(prefix + index, MAX_INDEX_BYTES), index, here, sha, listed)
            findings.extend(unreferenced_shards(here, names, index))
        sources = self._sources(names, settled, here, prefix, sha)
        config_raw = raw(prefix + "config.json", MAX_CONFIG_BYTES) if not listed or "config.json" in here else None
        try:
            reads = read_all(sources)
        except EntryNotFound as e:
            missing = next((n for n, s in sources.items() if s.name == e.where), None)
            if listed or missing is None:
                raise
            raise TargetNotFound(self.where(prefix + index), f"names shard {missing!r}, which the repo does not hold at {sha[:12]}") from None
        if not listed:  # what the listing would have said about the files read: the record kept for replays and preflight
            here = {index: len(index_raw), **({"config.json": len(config_raw)} if config_raw is not None else {}), **{n: s.size() for n, s in sources.items()}}
            here.update(self._modules_file(findings))
            files = {prefix + n: size for n, size in sorted(here.items())}
        for src in sources.values():
            if src.range_ignored:
                findings.append(Finding("range-ignored", f"{src.name}: the server ignored Range and sent the whole file; read {src.bytes_read} bytes, then closed the connection"))
        ck = self.finish(reads, config_raw, index, weight_map, index_meta, findings, here, sha, listed=listed)
        self._save(sha, files, config_raw, index_raw, sources, listed)
        return ck

    def _modules_file(self, findings: list[Finding]) -> dict[str, int]:
        """``{"modules.json": size}`` when the repo read without its listing is a sentence-transformers model (its
        root module sharded): the probe made beside the shard headers found the file, and the audit (api) then plans
        the repo's modules from the listing. Why only this file: the other layouts (a pipeline, an adapter, a set of
        GGUF files) never hold ``model.safetensors.index.json`` at their top, so their repos are listed anyway."""
        probe, self.modules_probe = self.modules_probe, None
        if probe is None:
            return {}
        body, _ = _outcome(probe)
        if isinstance(body, CkptError):
            findings.append(Finding("not-listed", f"{body.where}: not fetched ({body.what}): the repo was read without its listing, so modules beside the model (sentence-transformers) were not looked for"))
            return {}
        return {"modules.json": len(body)} if isinstance(body, bytes) else {}

    def _layout(self, files: dict | None, here: dict, prefix: str) -> tuple[str | None, list[str], list[Finding]]:
        """(index file or None, weight files, findings): what to count, as ``local.choose`` decides for a folder."""
        t = self.t
        if files is None:  # the index answered: counted without the listing
            return (t.path if t.is_file else LAYOUTS[0].index).rsplit("/", 1)[-1], [], []
        if t.is_file:
            name = t.path.rsplit("/", 1)[-1]
            if name not in here:
                raise TargetNotFound(self.where(t.path), f"no such file at {self.rev}")
            return (name, [], []) if is_index(name) else (None, [name], [])
        under = folders(files, prefix)
        if not here and not under:
            raise TargetNotFound(self.target, f"no files under {self.folder!r}" if self.folder else "the repository holds no files")
        _, index, names, findings = choose(set(here), self.target, under)
        return index, names, findings

    def _index(self, index_raw: bytes | None, index: str, here: dict, sha: str, listed: bool) -> tuple:
        """(raw index, weight map, index metadata, shard names) of the index, each shard checked to be a plain file
        next to it that the commit holds."""
        ipath = self.where((f"{self.folder}/" if self.folder else "") + index)
        if index_raw is None:
            raise TargetNotFound(ipath, "listed but could not be fetched")
        weight_map, index_meta = parse_index(index_raw, ipath)
        names = sorted(set(weight_map.values()))
        for n in names:
            check_path(n, ipath)
            if "/" in n:
                raise UnsafePath(ipath, f"shard {n!r} is not a file next to the index")
            if listed and n not in here:
                raise TargetNotFound(ipath, f"names shard {n!r}, which the repo does not hold at {sha[:12]}")
        return index_raw, weight_map, index_meta, names

    def _sources(self, names: list[str], settled: dict, here: dict, prefix: str, sha: str) -> dict[str, HttpFile]:
        """An :class:`HttpFile` per weight file: the probe's when it is usable at ``sha``, else a new one at ``sha``."""
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
        return sources

    def _save(self, sha: str, files: dict, config_raw, index_raw, sources: dict, listed: bool) -> None:
        """Keep what the readers consumed, for the next audit of this commit (:mod:`.cache`)."""
        t = self.t
        cache.save(
            t.endpoint,
            t.repo,
            sha,
            self.folder,
            listing=files,
            config=config_raw,
            index=index_raw,
            files={n: {"size": s.size(), "segments": [(o, s.view(o, ln)) for o, ln in cache.merge_ranges(s.served)]} for n, s in sources.items()},
            listed=listed,
        )
        cache.save_ref(t.endpoint, t.repo, self.rev, sha)

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
            "repo_files": MappingProxyType(dict(self.seen[1])) if listed and self.seen and self.seen[0] == sha else None,
        }
        return replace(ck, origin=MappingProxyType(origin))

    def downloaded(self) -> Checkpoint | None:
        return downloaded(self.target, self.t, self.rev)

    def replay(self, entry: dict, on_miss=None) -> Checkpoint | None:
        """Rebuild the Checkpoint from a cache entry: same bytes, same readers; a miss falls back to the network
        (``on_miss(sha)``, by default a fresh listing and read)."""
        on_miss = on_miss or self._refetch
        self.cached = True
        sha = entry["sha"]
        folder = self.folder
        prefix = f"{folder}/" if folder else ""
        files = entry["listing"]
        if entry.get("listed", True) is not False:
            self.seen = (sha, files)
        here = _top(files, prefix)
        findings: list[Finding] = []
        index = weight_map = None
        index_meta: dict = {}
        if self.t.is_file:
            name = self.t.path.rsplit("/", 1)[-1]
            index, names = (name, []) if is_index(name) else (None, [name])
        else:
            _, index, names, findings = choose(set(here), self.target, folders(files, prefix))
        if index is not None:
            if entry["index"] is None:  # the entry lacks what its listing says was read
                return on_miss(sha)
            weight_map, index_meta = parse_index(entry["index"], self.where(prefix + index))
            names = sorted(set(weight_map.values()))
            findings.extend(unreferenced_shards(here, names, index))
        reads = {}
        for n in names:
            f = entry["files"].get(n)
            if f is None:
                return on_miss(sha)
            src = cache.CachedFile(self.where(prefix + n), f["size"], f["segments"])
            try:
                reads[n] = read_file(src, n, self.where(prefix + n))
            except cache.CacheMiss:
                return on_miss(sha)
        return self.finish(reads, entry["config"], index, weight_map, index_meta, findings, here, sha, listed=entry.get("listed", True) is not False)

    def _refetch(self, sha: str) -> Checkpoint:
        if offline():
            raise OfflineError(self.target, "HF_HUB_OFFLINE is set and the cached headers are incomplete")
        self.cached = False
        sha, files = self.listing()
        return self.build(sha, files, {})


def _warm_up() -> None:
    """Import, while the first requests are in flight, what the rest of a Hub audit imports anyway (the analysis
    modules ``api.analyse`` imports on first use, and the preflight every Hub report gets): start-up CPU moved into
    the network wait."""
    from ..analysis import classify, count, moe, preflight, quant, tying  # noqa: F401


class _Stale:
    pass


_STALE = _Stale()


def _top(files: dict[str, int | None], prefix: str) -> dict[str, int | None]:
    """The files of a repo listing directly in the folder ``prefix`` names (``""``: the top), by their names there."""
    return {p[len(prefix) :]: s for p, s in files.items() if p.startswith(prefix) and "/" not in p[len(prefix) :]}


def _aside(fn, *args):
    """``fn(*args)`` started on a thread of its own, not waited for here: its future is read when its answer is needed."""
    side = ThreadPoolExecutor(max_workers=1)
    try:
        return side.submit(fn, *args)
    finally:
        side.shutdown(wait=False)


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
    if isinstance(result, NetworkError):
        return result
    if isinstance(result, CkptError):
        return _STALE
    return result if commit in (None, sha) else _STALE


def load_hub(target: str, revision: str | None = None, token: str | None = None) -> Checkpoint:
    """Read the headers of a Hub target (repo id, hf:// path or resolve URL). Raises :class:`CkptError`."""
    t = parse_target(target, revision)
    hub = _Hub(target, t, token)
    try:
        return hub.run()
    except CkptError as e:  # what finding out cost, and the listing if one came: for the audit's totals and its plan
        c = hub.client.counters if hub.client else None
        e.spent = (c.requests, c.bytes) if c else (0, 0)
        e.seen = hub.seen
        raise
