"""What the real Hub and its CDN send that a hand-made server easily leaves out (FACTS.md, "HTTP range facts";
huggingface_hub issue #3269): compressed and chunked answers, weak ETags, redirects to another host name, paginated
trees; and the defences that go with decoding (identity ranges, unknown codings, compression bombs).

Every test runs against the real HTTP stand-in (tests/hubserver.py) with the real huggingface_hub client; the
``stand_in_hub`` fixture runs each in both server modes, and the tests that are about one mode's behaviour say so."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptcount.api import audit
from ckptcount.cli import main
from ckptcount.errors import CkptError
from ckptcount.sources.http_decode import RATIO_GRACE, Body, DecodeError

from hubserver import HubServer, load_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _many_files(n: int = 40) -> dict:
    """The gpt2 fixture plus ``n`` small text files: a listing well over 1 KiB (openai-community/gpt2-xl's names ~20
    files with LFS info), so the "hub" mode compresses it."""
    files = load_dir(FIXTURES / "gpt2")
    files.update({f"notes/run-{i:03d}.txt": b"x" * 10 for i in range(n)})
    return files


def test_compressed_listing_and_index_are_decoded(stand_in_hub, tiny_sharded):
    """The two audits of the issue: a sharded repo (its index gzipped) and a repo whose listing is gzipped."""
    folder, oracle = tiny_sharded
    stand_in_hub.add("holdout/gpt2_sharded", load_dir(folder))
    stand_in_hub.add("holdout/many", _many_files())
    assert audit("holdout/gpt2_sharded").counts.parameters == oracle
    report = audit("holdout/many")
    assert report.counts.parameters == 124_439_808  # FACTS.md
    listing = stand_in_hub.requests("hub", r"^/api/models/holdout/many/revision/")
    index = stand_in_hub.requests("hub", r"^/holdout/gpt2_sharded/resolve/main/model\.safetensors\.index\.json$")
    assert len(listing) == 1 and len(index) == 1
    # bytes_received counts wire bytes: exactly what the server sent, compressed or not
    sent = sum(r.sent for r in stand_in_hub.settled() if "holdout/many" in r.path)
    assert report.checkpoint.origin["bytes_received"] == sent
    if stand_in_hub.mode == "hub":
        assert listing[0].encoding == index[0].encoding == "gzip"
        from huggingface_hub.utils import get_session

        plain = get_session().get(f"{stand_in_hub.url}{listing[0].path}?blobs=true", headers={"Accept-Encoding": "identity"})
        assert listing[0].sent < len(plain.content) // 3  # the decoded JSON is what was parsed
    else:
        assert listing[0].encoding is index[0].encoding is None


def test_ranges_ask_for_identity_and_whole_files_for_gzip(stand_in_hub):
    stand_in_hub.add("org/m", _many_files())
    audit("org/m")
    log = stand_in_hub.settled()
    ranged = [r for r in log if r.range]
    whole = [r for r in log if not r.range]
    assert ranged and whole
    assert all(r.headers.get("accept-encoding") == "identity" for r in ranged)
    assert all("gzip" in r.headers.get("accept-encoding", "") for r in whole)


def test_token_never_reaches_the_cdn_host(stand_in_hub):
    stand_in_hub.add("org/private", _many_files(), private=True)
    r = CliRunner().invoke(main, ["org/private", "--token", stand_in_hub.token, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    cdn = stand_in_hub.requests("cdn")
    assert cdn, "the LFS file was redirected to the CDN"
    assert all("authorization" not in x.headers for x in cdn)
    assert all(x.headers.get("authorization") == f"Bearer {stand_in_hub.token}" for x in stand_in_hub.requests("hub"))
    if stand_in_hub.mode == "hub":  # another host name, not only another port
        assert stand_in_hub.cdn_url.startswith("http://127.0.0.2:")


def test_compressed_range_answer_is_refused(stand_in_hub):
    stand_in_hub.add("org/m", load_dir(FIXTURES / "gpt2"))
    stand_in_hub.fault(r"model\.safetensors$", "headers", times=9, host="cdn", headers={"Content-Encoding": "gzip"})
    stand_in_hub.redirect_lfs = True
    with pytest.raises(CkptError) as e:
        audit("org/m")
    assert str(e.value) == "org/m/model.safetensors: the server compressed a range answer (Content-Encoding: gzip), which cannot be decoded as a range"


def test_unknown_content_encoding_is_one_line(stand_in_hub):
    stand_in_hub.add("org/m", load_dir(FIXTURES / "gpt2"))
    stand_in_hub.fault(r"config\.json$", "headers", times=9, headers={"Content-Encoding": "br"})
    r = CliRunner().invoke(main, ["org/m"])
    assert r.exit_code == 1
    assert r.stderr == "Error: org/m/config.json: unsupported Content-Encoding 'br' (asked for: gzip, deflate)\n"


def _bomb(decoded: int) -> bytes:
    """``decoded`` zero bytes, gzipped in pieces (never the whole in memory): about 1,000x smaller."""
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block, out = bytes(1 << 20), []
    for _ in range(decoded >> 20):
        out.append(c.compress(block))
    out.append(c.flush())
    return b"".join(out)


# Runs ckptcount's CLI in a fresh interpreter and writes that process's peak RSS (VmHWM, which belongs to the process's
# own memory map: a child's ru_maxrss would include the pytest parent it was forked from).
_PEAK = """
import sys
from ckptcount.cli import main
sys.argv = ["ckptcount", *sys.argv[2:]]
try:
    main()
except SystemExit as e:
    code = e.code or 0
status = open("/proc/self/status").read()
hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
with open(PEAK_FILE, "w") as f:
    f.write(str(hwm * 1024))
sys.exit(code)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
@pytest.mark.parametrize("where", ["listing", "index"])
def test_gzip_bomb_is_one_line_within_bounded_memory(where, tmp_path, tiny_sharded):
    """A 1 GiB gzip bomb as the repo listing (an API answer) or as the index: a one-line error, exit 1, and the
    process's peak RSS less than 64 MiB above the same audit of a normal repo, each in a process of its own."""
    bomb = _bomb(1 << 30)
    assert len(bomb) < 2_000_000
    server = HubServer(mode="hub")
    try:
        files = load_dir(FIXTURES / "gpt2") if where == "listing" else load_dir(tiny_sharded[0])
        server.add("org/normal", files)
        server.add("org/bomb", files)
        # at the branch and at the commit: a probe that fails is asked again at the commit
        match = r"^/api/models/org/bomb/revision/" if where == "listing" else r"^/org/bomb/resolve/[^/]+/model\.safetensors\.index\.json$"
        server.fault(match, "body", times=9, body=bomb, headers={"Content-Encoding": "gzip"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CKPTCOUNT_"))}
        env.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_TELEMETRY="1", NO_COLOR="1")

        def peak(repo: str) -> tuple[int, str, int]:
            out = tmp_path / f"peak-{repo.replace('/', '-')}"
            script = _PEAK.replace("PEAK_FILE", repr(str(out)))
            p = subprocess.run([sys.executable, "-c", script, "-", repo], env=env, capture_output=True, text=True)
            return p.returncode, p.stderr, int(out.read_text())

        code, err, normal = peak("org/normal")
        assert code == 0, err
        code, err, bombed = peak("org/bomb")
    finally:
        server.close()
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("Error: org/bomb") and "compression bomb refused" in err
    assert 0 < normal < 200 * 2**20  # the measurement is the audit's own process, not the suite's
    assert bombed - normal < 64 * 2**20, (bombed, normal)


class _Answer:
    """The two things :class:`Body` uses of an httpx response: its headers and ``iter_raw()`` (for the decoder's own
    properties; the HTTP path itself is tested above against the real server)."""

    def __init__(self, chunks: list[bytes], encoding: str | None):
        self.headers = {"content-encoding": encoding} if encoding else {}
        self.chunks = chunks

    def iter_raw(self):
        yield from self.chunks


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(len(data), c) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=5000) | st.builds(lambda n, b: b * n, st.integers(0, 300_000), st.binary(min_size=1, max_size=3)),
    coding=st.sampled_from([None, "gzip", "deflate", "deflate-raw", "gzip, deflate"]),
    cuts=st.lists(st.integers(0, 400_000), max_size=8),
    cap=st.integers(1, 400_000),
)
def test_decoder_gives_the_bytes_whatever_the_chunking(data, coding, cuts, cap):
    """Round trip against the standard library's encoders: any chunking, any cap; never more than ``cap`` bytes."""
    if coding is None:
        wire, header = data, None
    elif coding == "gzip":
        wire, header = gzip.compress(data), "gzip"
    elif coding == "deflate":
        wire, header = zlib.compress(data), "deflate"
    elif coding == "deflate-raw":  # some servers send raw deflate under "deflate"; httpx accepts it too
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        wire, header = c.compress(data) + c.flush(), "deflate"
    else:  # gzip applied first, then deflate: undone in reverse order
        wire, header = zlib.compress(gzip.compress(data)), "gzip, deflate"
    body = Body(_Answer(_split(wire, cuts), header), "x", allowed=True)
    try:
        got = body.read(cap)
    except DecodeError as e:  # only the bomb guard may refuse, and only past its grace
        assert "compression bomb" in str(e) and len(data) > RATIO_GRACE
        return
    assert got == data[:cap]
    assert body.wire <= len(wire)


def test_corrupt_gzip_is_one_line():
    body = Body(_Answer([b"\x1f\x8b\x08\x00garbage-not-deflate"], "gzip"), "org/m/config.json", allowed=True)
    with pytest.raises(DecodeError) as e:
        body.read(1000)
    assert str(e.value).startswith("org/m/config.json: the gzip body is corrupt (")


# -- the stand-in behaves as the Hub does, checked with huggingface_hub's own calls ----------------------------------


def test_tree_listing_is_paginated_and_the_client_follows_it(stand_in_hub):
    from huggingface_hub import HfApi

    files = _many_files(7)
    stand_in_hub.add("org/m", files)
    if stand_in_hub.mode == "hub":
        stand_in_hub.tree_page = 3  # the Hub pages at 1,000 entries; a small page walks several here
    got = {e.path for e in HfApi(endpoint=stand_in_hub.url).list_repo_tree("org/m", recursive=True) if hasattr(e, "size")}
    assert got == set(files)
    pages = stand_in_hub.requests("hub", r"^/api/models/org/m/tree/")
    assert len(pages) == (-(-len(files) // stand_in_hub.tree_page) if stand_in_hub.mode == "hub" else 1)


def test_head_stops_at_the_redirect(stand_in_hub):
    """huggingface_hub's metadata call reads the LFS file's size and ETag off the Hub's 302 and never asks the CDN."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    stand_in_hub.add("org/m", load_dir(FIXTURES / "gpt2"))
    meta = get_hf_file_metadata(hf_hub_url("org/m", "model.safetensors", endpoint=stand_in_hub.url))
    assert meta.size == (FIXTURES / "gpt2" / "model.safetensors").stat().st_size
    assert meta.commit_hash == stand_in_hub.repos["org/m"].sha
    assert stand_in_hub.requests("cdn") == []
    text = get_hf_file_metadata(hf_hub_url("org/m", "config.json", endpoint=stand_in_hub.url))
    assert text.etag  # huggingface_hub strips the weak marker of the Hub's text files


def test_production_like_tls_link(tmp_path, monkeypatch, tiny_sharded):
    """The stand-in over HTTPS (a self-signed certificate trusted through SSL_CERT_FILE) with 50 ms per request and
    per new connection: the audits work over TLS as on the real Hub, with the same round trips, and every connection
    the client opened is counted (docs/hub.md has the measurements)."""
    from huggingface_hub import close_session

    from hubserver import make_cert

    cert, key = make_cert(tmp_path)
    server = HubServer(mode="hub", tls=(cert, key), connect_latency=0.05)
    server.latency = 0.05
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CKPTCOUNT_CACHE", raising=False)
    close_session()  # the next session is built with the certificate trusted
    try:
        folder, oracle = tiny_sharded
        server.add("openai-community/gpt2", load_dir(FIXTURES / "gpt2"))
        server.add("test/tiny-sharded", load_dir(folder))
        assert server.url.startswith("https://127.0.0.1:") and server.cdn_url.startswith("https://127.0.0.2:")
        report = audit("openai-community/gpt2")
        assert report.counts.parameters == 124_439_808
        # config.json, the index and the single file's 302 together; then the listing on a reused connection while
        # the CDN connection is set up. The requests depend 2 deep; the log's chain counts 3 when the CDN's 50 ms
        # connection puts its request after the listing ended, 2 when it does not (both seen on a loaded 2-CPU runner)
        assert server.round_trips() in (2, 3)
        single = dict(server.connections)
        server.reset_log()
        assert audit("test/tiny-sharded").counts.parameters == oracle
        # HTTP/1.1: one connection per request in flight at once, so shards beyond the warm connections each wait for
        # a new one (and a new CDN connection after their 302): docs/hub.md, Measurements, "production-like TLS link"
        assert all("authorization" not in r.headers for r in server.requests("cdn"))
        assert single == {"hub": 3, "cdn": 1}
    finally:
        close_session()
        server.close()


def test_whole_file_sent_compressed_to_a_range_request(stand_in_hub, tiny_sharded):
    """A server that ignores both Range and Accept-Encoding: identity answers 200 with a whole shard gzipped. The body
    is decoded (the file from byte 0), and its compressed Content-Length is never taken for the file's size (a shard
    named by an index has no listing size to check it against)."""
    folder, oracle = tiny_sharded
    files = load_dir(folder)
    shard = sorted(n for n in files if n.endswith(".safetensors"))[0]
    stand_in_hub.add("org/m", files)
    stand_in_hub.redirect_lfs = False
    body = gzip.compress(files[shard])
    stand_in_hub.fault(rf"{shard}$", "body", times=9, body=body, headers={"Content-Encoding": "gzip"})
    report = audit("org/m")
    assert report.counts.parameters == oracle
    sizes = {f.path: f.size for f in report.checkpoint.files}
    assert sizes[shard] is None  # unknown (no Content-Range, no listing), never the compressed length
    assert any(f.kind == "range-ignored" for f in report.checkpoint.findings)
