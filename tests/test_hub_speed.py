"""The faster Hub path reports exactly what the slower one did: shard headers fetched by worker threads and parsed in
the calling thread, the header cache written without encoding the bytes, the garbage collector paused only while
parsing.

Oracles: the stdlib (``json.loads`` and slicing for the cache entry, a byte-set for range merging), parameter counts
computed here from the shapes written, and the local path's own reader on the same bytes for error messages.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptcount.targets import cache

from ckptcount.sources import http as http_source

from ckptcount.targets import shards as hub
from ckptcount.api import audit
from ckptcount.errors import CkptError
from ckptcount.sources.http import FIRST_BLOCK

from conftest import MemSource
from hubserver import Virtual


@pytest.fixture
def server(stand_in_hub):
    return stand_in_hub


def shard(rows: int, cols: int, prefix: str, header_len: int | None = None) -> tuple[Virtual, int]:
    """A safetensors file with ``rows`` F32 [cols] tensors (header space-padded to ``header_len``): (file, elements)."""
    obj, offset = {}, 0
    for i in range(rows):
        obj[f"{prefix}.{i}.weight"] = {"dtype": "F32", "shape": [cols], "data_offsets": [offset, offset + 4 * cols]}
        offset += 4 * cols
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if header_len is not None:
        assert len(raw) <= header_len
        raw += b" " * (header_len - len(raw))
    return Virtual(struct.pack("<Q", len(raw)) + raw, 8 + len(raw) + offset), rows * cols


def sharded_repo(headers: list[int | None]) -> tuple[dict, int]:
    """An index and one shard per entry of ``headers`` (its exact header length, or None for a small one)."""
    files, weight_map, total, data = {}, {}, 0, 0
    for k, n in enumerate(headers):
        name = f"model-{k + 1:05d}-of-{len(headers):05d}.safetensors"
        # as many tensors as fit in n bytes of JSON (each entry is 70-80 bytes), then padded to exactly n
        rows = 3 if n is None else max(1, (n - 200) // 90)
        f, elements = shard(rows, 8, f"layers.{k}", header_len=n)
        files[name] = f
        total += elements
        data += 4 * elements
        weight_map.update({f"layers.{k}.{i}.weight": name for i in range(rows)})
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": data}, "weight_map": weight_map}).encode()
    return files, total


def test_shard_headers_across_the_first_block_same_requests_and_counts(server):
    # header lengths N where 8 + N is just inside, exactly at, and just past the first block, and 3 blocks long
    headers = [None, FIRST_BLOCK - 8 - 1, FIRST_BLOCK - 8, FIRST_BLOCK - 8 + 1, 3 * FIRST_BLOCK, None]
    files, total = sharded_repo(headers)
    server.add("test/across", files)
    report = audit("test/across")
    assert report.counts.stored_elements == total and report.counts.parameters == total
    assert [f.header_bytes for f in report.checkpoint.files][1:5] == headers[1:5]
    cdn = server.requests("cdn")
    for k, n in enumerate(headers):
        name = f"model-{k + 1:05d}-of-{len(headers):05d}.safetensors"
        ranges = sorted(r.range for r in cdn if r.path.endswith(name))
        if n is None or 8 + n <= FIRST_BLOCK:  # no listing, no size: the first block, which the server cuts to the file
            assert ranges == [f"bytes=0-{FIRST_BLOCK - 1}"], name
        else:  # exactly the rest of the header, fetched by the worker before the parse
            assert ranges == [f"bytes=0-{FIRST_BLOCK - 1}", f"bytes={FIRST_BLOCK}-{8 + n - 1}"], name
        assert len(server.requests("hub", name + "$")) == 1  # one redirect per shard, later reads go to the CDN
    # config.json (404), the index and the single-file probe (404), then per shard its 302 and its CDN reads (no listing)
    assert len(server.settled()) == 4 + len(headers) + len(cdn)  # config, index, single-file probe, modules.json probe
    assert report.checkpoint.origin["requests"] == len(server.settled())


def test_parsing_is_in_the_calling_thread_and_errors_come_in_source_order(server, tmp_path, monkeypatch):
    headers = [None] * 6
    files, _ = sharded_repo(headers)
    names = sorted(n for n in files if n.endswith(".safetensors"))
    # shard 2: a header length over the cap; shard 5: invalid UTF-8. Shard 2 is also made slow, so it completes last.
    files[names[1]] = struct.pack("<Q", 100_000_001) + b"{}"
    bad = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode().replace(b'"w"', b'"\xff"')
    files[names[4]] = struct.pack("<Q", len(bad)) + bad + b"\0" * 4
    server.add("test/broken", files)
    server.fault(names[1].replace(".", r"\."), "sleep", times=1, seconds=0.4, host="cdn")

    threads: dict[str, str] = {}
    read_file = hub.read_file

    def spy(source, name, where):
        threads[name] = threading.current_thread().name
        return read_file(source, name, where)

    monkeypatch.setattr(hub, "read_file", spy)
    with pytest.raises(CkptError) as e:
        audit("test/broken")
    # the local reader on the same bytes says the same thing (only `where` differs)
    (tmp_path / names[1]).write_bytes(files[names[1]])
    with pytest.raises(CkptError) as local:
        audit(str(tmp_path / names[1]))
    assert str(e.value) == f"test/broken/{names[1]}: {local.value.what}"
    assert "exceeds the 100000000-byte cap" in str(e.value)
    assert set(threads) == set(names) and set(threads.values()) == {threading.main_thread().name}
    assert gc.isenabled()


Mem = MemSource  # a non-network source: read by its reader in a worker (nothing to prefetch)


def test_gc_is_restored_as_it_was(monkeypatch):
    f, _ = shard(2, 4, "x")
    data = f.head + b"\0" * (f.size - len(f.head))
    sources = {f"model-{i:05d}-of-00003.safetensors": Mem(f"m{i}", data) for i in (1, 2, 3)}
    seen = []
    read_file = hub.read_file
    monkeypatch.setattr(hub, "read_file", lambda s, n, w: (seen.append(gc.isenabled()), read_file(s, n, w))[1])
    assert gc.isenabled()
    reads = hub.read_all(sources)
    assert [r.record.tensors for r in reads.values()] == [2, 2, 2]
    assert seen == [False] * 3 and gc.isenabled()
    gc.disable()
    try:
        hub.read_all(dict(list(sources.items())[:1]))
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
    broken = dict(sources, **{"model-00002-of-00003.safetensors": Mem("m2", b"\1" * 4)})
    with pytest.raises(CkptError, match="too short for the 8-byte header length"):
        hub.read_all(broken)
    assert gc.isenabled()


def test_cache_entry_is_a_json_line_then_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTCOUNT_CACHE", str(tmp_path))
    rng = random.Random(7)
    # untrusted names from a listing or index: quotes, backslashes, control characters, non-ASCII, a JSON-looking name
    names = ['a"b.safetensors', "c\\u0001d.safetensors", "e\x01f\n.safetensors", "ünï.safetensors", '"],"x":[1,"']
    files = {}
    for n in names:
        segs = [(0, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))), (1000, b"\x00\xff\n" * 3)]
        files[n] = {"size": 5000, "segments": segs}
    listing = {n: 5000 for n in names} | {"config.json": None}
    config, index = b'{"model_type": "gpt2"}\n', None
    sha = "a" * 40
    got = b"".join(cache.entry_bytes("o/r", sha, "sub/dir", listing, config, index, {n: {"size": f["size"], "segments": [(o, memoryview(d)) for o, d in f["segments"]]} for n, f in files.items()}))
    # oracle: the line is the JSON of what the entry holds; each [start, length] finds its bytes after the line
    line, rest = got.split(b"\n", 1)
    head = json.loads(line)
    assert {k: head[k] for k in ("version", "repo", "sha", "sub", "listing", "listed", "index")} == {
        "version": cache.VERSION, "repo": "o/r", "sha": sha, "sub": "sub/dir", "listing": listing, "listed": True, "index": None}
    start, length = head["config"]
    assert rest[start : start + length] == config
    assert list(head["files"]) == names
    for n, f in files.items():
        assert head["files"][n]["size"] == 5000
        assert [(o, rest[s : s + ln]) for o, s, ln in head["files"][n]["segments"]] == f["segments"]
    assert len(rest) == len(config) + sum(len(d) for f in files.values() for _, d in f["segments"])  # each byte once
    legacy = tmp_path / "h_1" / "models--o--r" / f"{sha}--{hashlib.sha256(b'sub/dir').hexdigest()[:16]}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text('{"version": 1}')  # the same commit's entry as version 1 wrote it: never read again
    cache.save("http://h:1", "o/r", sha, "sub/dir", listing=listing, config=config, index=index, files=files)
    assert not legacy.exists() and [p.name for p in legacy.parent.iterdir()] == [legacy.with_suffix(".entry").name]
    entry = cache.load("http://h:1", "o/r", sha, "sub/dir")
    assert entry["config"] == config and entry["index"] is None and entry["listing"] == listing
    assert entry["files"] == {n: {"size": 5000, "segments": f["segments"]} for n, f in files.items()}
    assert [p.name for p in Path(tmp_path).rglob(".tmp-*")] == []
    # a damaged entry is ignored (refetched online), never half-read
    [path] = Path(tmp_path).rglob("*.entry")
    whole = path.read_bytes()
    for damaged in (whole[:-1], whole[: len(line) + 1], whole[: len(line) // 2], b"", b"\n" + whole, line.replace(b'"version":2', b'"version":1') + whole[len(line) :]):
        path.write_bytes(damaged)
        assert cache.load("http://h:1", "o/r", sha, "sub/dir") is None
    path.write_bytes(whole)
    assert cache.load("http://h:1", "o/r", sha, "sub/dir") == entry


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**7) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _paths(node, at=()):
    """Every place in a JSON document, as the keys and positions leading to it."""
    yield at
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in children:
        yield from _paths(v, at + (k,))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_cache_entry_is_fetched_again_never_half_replayed(server, monkeypatch, data):
    """Any one value of an entry's JSON line replaced by any JSON value (or the bytes cut short): ``load`` gives None or
    fields of the types written, and an offline replay reports or fails with ckptcount's own error, never another."""
    if "o/cached" not in server.repos:  # once: the server and HF_HOME last for every example
        files, total = sharded_repo([None, None, None])
        server.add("o/cached", files)
        assert audit("o/cached").counts.parameters == total
        [server.entry] = Path(os.environ["HF_HOME"]).rglob("*.entry")
        server.pristine = server.entry.read_bytes()
    path, pristine = server.entry, server.pristine
    line, rest = pristine.split(b"\n", 1)
    head = json.loads(line)
    sha = head["sha"]
    where = data.draw(st.sampled_from([p for p in _paths(head) if p]))
    value = data.draw(JSON_VALUES)
    node = head
    for k in where[:-1]:
        node = node[k]
    node[where[-1]] = value
    damaged = json.dumps(head).encode() + b"\n" + rest[: data.draw(st.integers(0, len(rest)))]
    path.write_bytes(damaged)
    entry = cache.load(server.url, "o/cached", sha, "")
    if entry is not None:
        assert all(v is None or type(v) is int for v in entry["listing"].values())
        assert all(b is None or type(b) is bytes for b in (entry["config"], entry["index"]))
        for f in entry["files"].values():
            assert type(f["size"]) is int and all(type(o) is int and type(d) is bytes for o, d in f["segments"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        audit("o/cached")
    except CkptError:
        pass
    finally:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        path.write_bytes(pristine)


def test_merge_ranges_against_a_byte_set():
    rng = random.Random(3)
    for _ in range(300):
        reads = [(rng.randrange(0, 60), rng.randrange(1, 12)) for _ in range(rng.randrange(0, 8))]  # reads are never empty
        merged = cache.merge_ranges(reads)
        covered = {b for o, n in reads for b in range(o, o + n)}
        assert {b for o, n in merged for b in range(o, o + n)} == covered
        assert sum(n for _, n in merged) == len(covered)  # no byte twice
        assert all(o1 + n1 < o2 for (o1, n1), (o2, _) in zip(merged, merged[1:]))  # sorted, disjoint, not adjacent


def test_http_file_view_and_reads_copy_once(server):
    f, _ = shard(4, 4, "v")
    server.add("test/view", {"model.safetensors": f})
    client = http_source.HubClient(server.url)
    src = http_source.HttpFile(client, f"{server.url}/test/view/resolve/main/model.safetensors", "model.safetensors", "test/view/model.safetensors")
    src.prefetch_header()
    assert src.served == [] and src.requests == 1  # prefetching is not reading: the cache keeps only what readers read
    n = struct.unpack("<Q", f.head[:8])[0]
    assert src.read(8, n) == f.head[8 : 8 + n] and isinstance(src.read(0, 8), bytes)
    assert bytes(src.view(0, 8 + n)) == f.head[: 8 + n] and src.view(0, 8).readonly
    assert src.served == [(8, n), (0, 8)] and cache.merge_ranges(src.served) == [(0, 8 + n)]
    with pytest.raises(ValueError):
        src.view(0, f.size + 1)
