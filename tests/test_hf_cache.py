"""Checkpoints inside the Hugging Face cache: a snapshot folder's files are symlinks into the repo's ``blobs/``.

The cache here is made by huggingface_hub itself (``snapshot_download`` from the stand-in Hub), not laid out by hand,
so the test follows whatever layout the installed huggingface_hub writes. Crafted trees check that only the repo's
own ``blobs/`` is let in.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from click.testing import CliRunner
from hubserver import load_dir

from ckptcount import audit
from ckptcount.cli import main
from ckptcount.errors import CkptError, TargetNotFound, UnsafePath
from ckptcount.sources.files import real_roots
from test_local import S1, S2, A, B, st_file, write_sharded


def fetch(server, repo: str, cache_dir, **kw) -> str:
    """huggingface_hub's own ``snapshot_download`` from the stand-in Hub, with its CDN redirect off meanwhile: the
    stand-in's CDN is another port of 127.0.0.1, which huggingface_hub 1.x takes for the Hub's own host and follows on
    its HEAD requests, then misses the commit header there (the real CDN is another host, where it stops)."""
    from huggingface_hub import snapshot_download

    redirect, server.redirect_lfs = server.redirect_lfs, False
    try:
        return snapshot_download(repo, cache_dir=str(cache_dir), endpoint=server.url, **kw)
    finally:
        server.redirect_lfs = redirect


def _counted(report) -> tuple:
    c = report.counts
    return (c.parameters, c.weights, c.biases, c.buffers, [g.names for g in report.ties], [f.path for f in report.checkpoint.files])


def test_a_sharded_snapshot_in_the_hub_cache_is_counted(stand_in_hub, tiny_sharded, tmp_path, monkeypatch):
    folder, oracle = tiny_sharded
    stand_in_hub.add("org/tiny", load_dir(folder))
    snapshot = fetch(stand_in_hub, "org/tiny", tmp_path / "cache")
    shards = sorted(n for n in os.listdir(snapshot) if n.endswith(".safetensors"))
    assert len(shards) >= 3 and all(os.path.islink(os.path.join(snapshot, n)) for n in shards)  # the cache's layout
    report = audit(snapshot)
    assert report.counts.parameters == oracle
    assert _counted(report) == _counted(audit(str(folder)))
    # the index named directly, and the repo's folder in the cache (refs/main names the snapshot)
    assert _counted(audit(os.path.join(snapshot, "model.safetensors.index.json"))) == _counted(report)
    repo_folder = tmp_path / "cache" / "models--org--tiny"
    assert (repo_folder / "refs" / "main").is_file()
    by_repo = audit(str(repo_folder))
    assert _counted(by_repo) == _counted(report) and by_repo.checkpoint.target == str(repo_folder)
    # the column titles name the repo (and the commit), not the cache's folder names
    r = CliRunner().invoke(main, [snapshot, str(repo_folder), "--format", "markdown"])
    assert r.stdout.splitlines()[0] == f"| | org/tiny@{os.path.basename(snapshot)[:7]} | org/tiny |"
    monkeypatch.chdir(snapshot)  # `ckptcount .` inside the snapshot: the folder "." stands for
    r = CliRunner().invoke(main, [".", "--format", "markdown"])
    assert r.stdout.splitlines()[0] == f"| | org/tiny@{os.path.basename(snapshot)[:7]} |"


def test_a_snapshot_in_a_subfolder_of_the_repo(tmp_path):
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    sub = repo / "snapshots" / "0123abcd" / "text_encoder"
    write_sharded(tmp_path / "src", {S1: A, S2: B})
    sub.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(tmp_path / "src"))):
        os.replace(tmp_path / "src" / name, repo / "blobs" / f"h{i}")
        os.symlink(f"../../../blobs/h{i}", sub / name)
    assert real_roots(sub) == (sub.resolve(), (repo / "blobs").resolve())
    assert audit(str(sub)).counts.parameters == 24


def _cache_tree(tmp_path, link_for_s2: str, *, blobs_link: str | None = None):
    """models--org--m with S1 and the index in blobs/, S2 a symlink to ``link_for_s2``; blobs itself a symlink to
    ``blobs_link`` when given."""
    write_sharded(tmp_path / "src", {S1: A, S2: B})
    repo = tmp_path / "models--org--m"
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    store = tmp_path / "elsewhere" if blobs_link else repo / "blobs"
    store.mkdir()
    if blobs_link:
        os.symlink(blobs_link, repo / "blobs")
    for name in ("model.safetensors.index.json", S1):
        os.replace(tmp_path / "src" / name, store / name)
        os.symlink(f"../../blobs/{name}", snapshot / name)
    os.symlink(link_for_s2, snapshot / S2)
    return snapshot


def test_a_snapshot_symlink_that_leaves_blobs_is_refused(tmp_path):
    snapshot = _cache_tree(tmp_path, str(tmp_path / "src" / S2))  # a real shard, but outside the repo's blobs
    with pytest.raises(UnsafePath, match=f"path '{S2}' resolves outside the checkpoint directory"):
        audit(str(snapshot))
    # the same file moved into blobs is counted
    os.replace(tmp_path / "src" / S2, tmp_path / "models--org--m" / "blobs" / S2)
    os.unlink(snapshot / S2)
    os.symlink(f"../../blobs/{S2}", snapshot / S2)
    assert audit(str(snapshot)).counts.parameters == 24


def test_blobs_as_a_symlink_lets_nothing_in(tmp_path):
    # a crafted tree: blobs -> elsewhere/ (which holds the other files); the snapshot's S2 points into elsewhere/ too
    snapshot = _cache_tree(tmp_path, f"../../../src/{S2}", blobs_link=str(tmp_path / "elsewhere"))
    assert real_roots(snapshot) == (snapshot.resolve(),)
    with pytest.raises(UnsafePath, match="resolves outside the checkpoint directory"):
        audit(str(snapshot))


@pytest.mark.parametrize("repo_folder", ["models--org--m", "datasets--org--d", "spaces--org--s"])
def test_only_a_cache_repo_folder_with_snapshots_and_blobs_counts(tmp_path, repo_folder):
    snapshot = tmp_path / repo_folder / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert real_roots(snapshot) == (snapshot.resolve(),)  # no blobs/ yet
    (tmp_path / repo_folder / "blobs").mkdir()
    assert real_roots(snapshot) == (snapshot.resolve(), (tmp_path / repo_folder / "blobs").resolve())
    for other in (tmp_path / "models-org" / "snapshots" / "abc", tmp_path / "x" / "snapshot" / "abc"):
        other.mkdir(parents=True)
        (other.parent.parent / "blobs").mkdir()
        assert real_roots(other) == (other.resolve(),)


def test_verify_ties_reads_the_embedding_and_head_through_the_snapshot(stand_in_hub, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ckptcount.verify.run import verify_report
    from ckptcount.verify.spans import local_opener

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=131, n_positions=64, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(config)
    model.lm_head.weight.data.copy_(model.transformer.wte.weight.data)  # untied, identical: verify must read both
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    stand_in_hub.add("org/untied", load_dir(tmp_path / "src"))
    snapshot = fetch(stand_in_hub, "org/untied", tmp_path / "cache")
    opener = local_opener(snapshot)
    report = verify_report(audit(snapshot), device="cpu", open_source=opener)
    check = report.verification.embedding_vs_head
    assert check.identical and check.pearson_r == pytest.approx(1.0)
    assert check.bytes_read == 2 * 131 * 32 * 4
    files = {f.path for f in report.checkpoint.files}
    assert len(files) >= 2 and set(opener.opened) <= files and all(os.path.islink(os.path.join(snapshot, n)) for n in opener.opened)


def _two_snapshots(tmp_path):
    """models--org--m with snapshot "old" (one tensor) and "new" (three), real files, no refs."""
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / "old").mkdir()
    (repo / "snapshots" / "old" / "model.safetensors").write_bytes(st_file(A))
    write_sharded(repo / "snapshots" / "new", {S1: A, S2: B})
    return repo


def test_a_cache_repo_folder_counts_the_snapshot_refs_main_names(tmp_path):
    repo = _two_snapshots(tmp_path)
    with pytest.raises(TargetNotFound, match=r"a Hugging Face cache folder with 2 snapshots and no refs/main; name one: new, old$"):
        audit(str(repo))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("old")  # huggingface_hub writes the commit without a newline
    assert audit(str(repo)).counts.parameters == 16
    (repo / "refs" / "main").write_text("new\n")
    assert audit(str(repo)).counts.parameters == 24
    os.unlink(repo / "refs" / "main")
    os.rename(repo / "snapshots" / "new", tmp_path / "new")
    assert audit(str(repo)).counts.parameters == 16  # the only snapshot


@pytest.mark.parametrize(
    "ref, message",
    [
        ("../../../etc", "models--org--m/refs/main: path '../../../etc' leaves the checkpoint directory"),
        ("/etc", "models--org--m/refs/main: path '/etc' is not a plain relative path"),
        ("gone", "models--org--m: refs/main names commit 'gone', which has no snapshot here"),
        ("", "models--org--m/refs/main: path '' is not a plain relative path"),
    ],
)
def test_a_bad_refs_main_is_one_line_and_exit_1(tmp_path, monkeypatch, ref, message):
    repo = _two_snapshots(tmp_path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(ref)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["models--org--m"])
    assert result.exit_code == 1 and result.output == f"Error: {message}\n"


def test_a_folder_named_like_a_cache_repo_without_snapshots_is_an_ordinary_folder(tmp_path):
    folder = tmp_path / "models--org--m"
    write_sharded(folder, {S1: A, S2: B})
    assert audit(str(folder)).counts.parameters == 24


# -- offline Hub targets: huggingface_hub's downloaded copy, when ckptcount never read the repo's headers itself


def _download(server, repo: str, files: dict, tmp_path, **kw) -> str:
    server.add(repo, files)
    # stand_in_hub sets HF_HOME=tmp_path/hf, so this is the cache huggingface_hub itself would use
    return fetch(server, repo, tmp_path / "hf" / "hub", **kw)



def test_offline_a_downloaded_repo_is_counted_from_the_hub_cache(stand_in_hub, tiny_sharded, tmp_path, monkeypatch):
    folder, oracle = tiny_sharded
    snapshot = _download(stand_in_hub, "org/tiny", load_dir(folder), tmp_path)
    commit = os.path.basename(snapshot)
    stand_in_hub.reset_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    report = audit("org/tiny")
    assert stand_in_hub.settled() == []  # not one request
    assert report.counts.parameters == oracle and _counted(report) == _counted(audit(str(folder)))
    o = report.checkpoint.origin
    assert (report.checkpoint.target, o["sha"], o["requests"], o["local_copy"]) == ("org/tiny", commit, 0, snapshot)
    assert report.preflight.download_bytes == sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert audit(f"org/tiny@{commit}").counts.parameters == oracle  # a commit sha names its snapshot
    os.symlink(tmp_path / "hf", tmp_path / "linked")  # a cache reached through a symlinked folder (~/.cache -> /data)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "linked"))
    assert audit("org/tiny").checkpoint.origin["local_copy"] == snapshot  # the real path
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))  # huggingface_hub's own variable moves it
    with pytest.raises(CkptError, match="has no cached headers and no downloaded copy"):
        audit("org/tiny")
    assert stand_in_hub.settled() == []


def test_offline_cli_says_where_it_read_and_verify_reads_the_copy(stand_in_hub, tmp_path, monkeypatch, fixtures_dir):
    pytest.importorskip("numpy")
    snapshot = _download(stand_in_hub, "openai-community/gpt2", load_dir(fixtures_dir / "gpt2"), tmp_path)
    stand_in_hub.reset_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["openai-community/gpt2", "--strict"])
    assert r.exit_code == 0 and " 124,439,808 " in r.stdout
    notes = r.stdout.splitlines()[-2:]  # under the table, before the tie's evidence
    assert notes[0] == f"gpt2: offline: read the downloaded copy in {snapshot}" and notes[1].startswith("gpt2: tie wte.weight")
    r = CliRunner().invoke(main, ["openai-community/gpt2", "--format", "json"])
    hub = json.loads(r.stdout)["targets"][0]["hub"]
    assert (hub["local_copy"], hub["requests"], hub["sha"]) == (snapshot, 0, os.path.basename(snapshot))
    assert stand_in_hub.settled() == []


def test_offline_verify_ties_reads_the_downloaded_copy(stand_in_hub, tiny_sharded, tmp_path, monkeypatch):
    pytest.importorskip("numpy")
    folder, _ = tiny_sharded
    _download(stand_in_hub, "org/tiny", load_dir(folder), tmp_path)
    stand_in_hub.reset_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(main, ["org/tiny", "--verify-ties", "--device", "cpu", "--format", "json"])
    check = json.loads(r.stdout)["targets"][0]["embedding_vs_head"]["verification"]
    assert r.exit_code == 0 and check["orientation"] == "structural" and check["bytes_read"] == 211 * 32 * 4
    assert stand_in_hub.settled() == []


def test_offline_a_partial_download_fails_on_what_is_missing(stand_in_hub, tiny_sharded, tmp_path, monkeypatch):
    folder, _ = tiny_sharded
    snapshot = _download(stand_in_hub, "org/tiny", load_dir(folder), tmp_path, allow_patterns=["*.json"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TargetNotFound, match=rf"^{snapshot}/model-00001-of-0000\d.safetensors: no such file$"):
        audit("org/tiny")


# -- the Hub unreachable: what this machine has, said in the report (huggingface_hub falls back to its cache too)


def test_unreachable_hub_falls_back_to_the_cached_headers_then_the_downloaded_copy(stand_in_hub, tiny_sharded, tmp_path):
    from huggingface_hub.utils import close_session

    folder, oracle = tiny_sharded
    snapshot = _download(stand_in_hub, "org/tiny", load_dir(folder), tmp_path)
    stand_in_hub.add("org/other", load_dir(folder))
    first = audit("org/other")  # read online once: its headers are cached
    sha = first.checkpoint.origin["sha"]
    stand_in_hub.close()  # the port now refuses connections; the session's kept-alive ones are closed too
    close_session()
    r = CliRunner().invoke(main, ["org/other", "--format", "json"])
    hub = json.loads(r.stdout)["targets"][0]["hub"]
    assert r.exit_code == 0 and json.loads(r.stdout)["targets"][0]["parameters"] == oracle
    assert (hub["cached"], hub["sha"], "local_copy" in hub) == (True, sha, False)
    assert re.fullmatch(r"cannot connect to http://127\.0\.0\.1:\d+ \(.+\)", hub["unreachable"])
    r = CliRunner().invoke(main, ["org/tiny"])  # never audited, but downloaded
    notes = r.stdout.splitlines()
    assert r.exit_code == 0 and any(f" {oracle:,} " in line for line in notes)
    assert notes[-2].startswith("tiny: the Hub could not be reached (cannot connect to ") and notes[-2].endswith(f"): read the downloaded copy in {snapshot}")
    r = CliRunner().invoke(main, ["org/neither"])  # nothing here: the network error, as before
    assert r.exit_code == 1 and re.fullmatch(r"Error: org/neither: cannot connect to http://127\.0\.0\.1:\d+ \(.+\)\n", r.stderr)
