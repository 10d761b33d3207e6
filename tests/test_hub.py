"""Hub audits against a real HTTP server on 127.0.0.1 (tests/hubserver.py): exact reports, errors, exit codes and
request counts. Expected numbers come from /work/shared/FACTS.md (transformers on the meta device) and, for the
checkpoints written here, from torch itself; never from ckptcount's own output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount.api import audit, audit_many
from ckptcount.cli import main
from ckptcount.errors import CkptError
from ckptcount.sources.http import FIRST_BLOCK
from ckptcount.report.render import to_json

from conftest import safetensors_head
from hubserver import Virtual, load_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# FACTS.md: the GPT-2 family as stored on the Hub.
GPT2 = {
    "gpt2": (124_439_808, 137_022_720, 160),
    "gpt2-medium": (354_823_168, 379_988_992, 316),
    "gpt2-large": (774_030_080, 811_778_816, 472),
    "gpt2-xl": (1_557_611_200, 1_607_942_848, 628),
}


@pytest.fixture
def hub(stand_in_hub):
    for name in GPT2:
        stand_in_hub.add(f"openai-community/{name}", load_dir(FIXTURES / name))
    return stand_in_hub


def _comparable(report) -> dict:
    """The JSON of a report without what legitimately differs between a local path and the Hub."""
    d = json.loads(to_json([report]))["targets"][0]
    for key in ("target", "hub", "preflight"):
        d.pop(key, None)
    for f in d["files"]:  # local: the 8 + N header bytes; Hub: the bytes received (the speculative block)
        f.pop("bytes_read")
    return d


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]], *, header_len: int | None = None, metadata: dict | None = None) -> tuple[bytes, int]:
    """A safetensors header for zero-filled tensors, space-padded to exactly ``header_len`` bytes; (head, file size)."""
    head, data = safetensors_head(tensors, metadata=metadata, header_len=header_len)
    return head, len(head) + data


# -- the GPT-2 family: same report as local, exact counts, request plan ---------------------------------------------


def test_gpt2_family_same_report_as_local_path(hub):
    targets = [f"openai-community/{n}" for n in GPT2]
    remote = audit_many(targets)
    for name, report in zip(GPT2, remote):
        assert not isinstance(report, CkptError), report
        params, stored, tensors = GPT2[name]
        assert report.counts.parameters == params
        assert report.counts.stored_elements == stored
        assert len(report.checkpoint.tensors) == tensors
        assert _comparable(report) == _comparable(audit(str(FIXTURES / name)))
        assert report.checkpoint.origin["sha"] == hub.repos[f"openai-community/{name}"].sha
    # Per repo: config + index probe (404), then the listing + model.safetensors probe (302 -> CDN 206): 5 requests.
    assert len(hub.settled()) == 5 * len(GPT2)
    assert len(hub.requests("cdn")) == len(GPT2)
    assert all(r.status == 206 and r.range == f"bytes=0-{FIRST_BLOCK - 1}" for r in hub.requests("cdn"))


def test_single_file_round_trips_and_requests(hub):
    hub.latency = 0.05
    report = audit("openai-community/gpt2")
    assert report.counts.parameters == 124_439_808
    sha = hub.repos["openai-community/gpt2"].sha
    paths = sorted((r.host, r.path, r.status) for r in hub.settled())
    assert paths == [
        ("cdn", f"/repos/openai-community/gpt2/{sha}/model.safetensors", 206),
        ("hub", f"/api/models/openai-community/gpt2/revision/{sha}", 200),
        ("hub", "/openai-community/gpt2/resolve/main/config.json", 200),
        ("hub", "/openai-community/gpt2/resolve/main/model.safetensors", 302),
        ("hub", "/openai-community/gpt2/resolve/main/model.safetensors.index.json", 404),
    ]
    # config.json, the index and the single file start together; the index's 404 names the commit, at which the
    # listing starts while the single file takes its CDN hop: two sequential steps.
    assert hub.round_trips() == 2
    assert report.checkpoint.origin["requests"] == 5
    assert report.checkpoint.files[0].bytes_read == 14_347  # the header-only fixture is shorter than the first block


# -- real checkpoints written here, counted by torch ----------------------------------------------------------------


def test_sharded_checkpoint_written_by_transformers(hub, tiny_sharded):
    folder, oracle = tiny_sharded
    files = load_dir(folder)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert len(shards) >= 3
    hub.add("test/tiny-sharded", files)
    hub.latency = 0.05
    report = audit("test/tiny-sharded")
    assert report.counts.parameters == oracle
    assert _comparable(report) == _comparable(audit(str(folder)))
    assert [f.bytes_read for f in report.checkpoint.files] == [min(len(files[s]), FIRST_BLOCK) for s in shards]
    # config + index + the single-file probe (a 404 here), then per shard its 302 and CDN 206, and beside them the
    # modules.json probe (a 404: not a sentence-transformers model); no listing.
    assert len(hub.requests("hub")) == 4 + len(shards)
    assert len(hub.requests("cdn")) == len(shards)
    assert hub.requests("hub", "^/api/") == []
    assert hub.round_trips() == 3
    assert report.preflight.bytes_by_format == {"safetensors": sum(len(files[s]) for s in shards)}
    assert report.preflight.download_bytes == sum(len(files[s]) for s in shards)


def test_sharded_repo_costs_shards_plus_four_requests(hub, tiny_sharded, monkeypatch):
    """Issue 7 asks for shards + at most 2; this is shards + 4 (docs/hub.md says why: the single-file probe that keeps
    single-file repos at two round trips, and the modules.json probe that keeps a sentence-transformers model with a
    sharded root from being counted without its modules). Served without the CDN redirect, a sharded repo costs
    exactly config.json, the index, the single file's 404, one request per shard and, beside the shards, the
    modules.json 404: the commit comes from the index's X-Repo-Commit, the
    sizes from Content-Range; the second audit of the branch, of the sha and offline behave as for any repo."""
    folder, oracle = tiny_sharded
    files = load_dir(folder)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    repo = hub.add("test/tiny-sharded", files)
    hub.redirect_lfs = False
    hub.latency = 0.05
    report = audit("test/tiny-sharded")
    assert report.counts.parameters == oracle
    assert _comparable(report) == _comparable(audit(str(folder)))
    log = hub.settled()
    assert len(log) == report.checkpoint.origin["requests"] == len(shards) + 4
    assert sorted(r.path for r in log) == sorted(
        ["/test/tiny-sharded/resolve/main/config.json", "/test/tiny-sharded/resolve/main/model.safetensors.index.json",
         "/test/tiny-sharded/resolve/main/model.safetensors", f"/test/tiny-sharded/resolve/{repo.sha}/modules.json"]
        + [f"/test/tiny-sharded/resolve/{repo.sha}/{s}" for s in shards]
    )
    assert hub.round_trips() == 2  # config + index together, then every shard (and modules.json) together
    assert report.checkpoint.origin["sha"] == repo.sha
    assert [f.size for f in report.checkpoint.files] == [len(files[s]) for s in shards]  # from Content-Range
    sizes = sum(len(files[s]) for s in shards)
    assert (report.preflight.bytes_by_format, report.preflight.download_bytes) == ({"safetensors": sizes}, sizes)
    hub.reset_log()
    again = audit("test/tiny-sharded")
    assert [r.path for r in hub.settled()] == ["/api/models/test/tiny-sharded/revision/main"]
    assert again.checkpoint.origin["cached"] is True and _comparable(again) == _comparable(report)
    assert (again.preflight.bytes_by_format, again.preflight.download_bytes) == ({"safetensors": sizes}, sizes)
    assert not report.preflight.listing_complete and not again.preflight.listing_complete  # the cache keeps it
    hub.reset_log()
    assert audit(f"test/tiny-sharded@{repo.sha}").counts.parameters == oracle
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _comparable(audit("test/tiny-sharded")) == _comparable(report)
    assert hub.settled() == []


def test_sharded_repo_without_listing_does_not_see_other_files(hub, tiny_sharded, tmp_path):
    """What the listing would add for a sharded repo, and is not fetched for (docs/hub.md): formats not counted and
    shards the index does not name are not reported, and preflight sizes only the counted shards."""
    folder, oracle = tiny_sharded
    files = load_dir(folder)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    extra = {"pytorch_model.bin": b"\0" * 1000, "model-00099-of-00099.safetensors": files[shards[0]]}
    hub.add("test/both", {**files, **extra})
    report = audit("test/both")
    assert report.counts.parameters == oracle
    assert report.checkpoint.findings == ()
    sizes = sum(len(files[s]) for s in shards)
    assert report.preflight.bytes_by_format == {"safetensors": sizes}
    assert hub.requests("hub", "^/api/") == []
    # ... and says so, in the table and the JSON
    r = CliRunner().invoke(main, ["test/both", "--format", "json"])
    assert json.loads(r.stdout)["targets"][0]["preflight"]["bytes_by_format_covers"] == "the counted files (repo not listed)"
    table = CliRunner().invoke(main, ["test/both"]).stdout
    assert "files safetensors (counted; repo not listed)" in table and "(all in repo)" not in table
    # The same files on disk: the directory listing is free, so the local report says what else is there.
    for name, data in {**files, **extra}.items():
        (tmp_path / name).write_bytes(data)
    local = audit(str(tmp_path), max_size=10**12)  # any preflight option gives a local target its preflight
    assert local.counts.parameters == oracle
    assert sorted(f.kind for f in local.checkpoint.findings) == ["ignored-format", "unreferenced-shard"]
    assert set(local.preflight.bytes_by_format) == {"safetensors", "pytorch"}


def test_config_from_another_commit_than_the_index_is_fetched_again(hub, tiny_sharded):
    """main moves between the config.json answer and the index answer: the index's commit is read, and config.json
    again at it (its X-Repo-Commit named the old commit)."""
    import threading

    folder, oracle = tiny_sharded
    files = load_dir(folder)
    old_config = json.loads(files["config.json"])
    repo = hub.add("test/moving", {**files, "config.json": json.dumps({**old_config, "marker": "old"}).encode()})
    old_sha, new_sha = repo.sha, "e" * 40
    hub.fault(r"model\.safetensors\.index\.json$", "sleep", times=1, seconds=0.6)  # the index is resolved late

    def move() -> None:
        while not any(r.path.endswith("config.json") for r in list(hub.log)):  # logged as its handler ends
            threading.Event().wait(0.01)
        repo.commits[old_sha] = dict(repo.files)
        repo.files, repo.sha = {**files, "config.json": json.dumps({**old_config, "marker": "new"}).encode()}, new_sha

    mover = threading.Thread(target=move)
    mover.start()
    report = audit("test/moving")
    mover.join()
    assert report.checkpoint.origin["sha"] == new_sha
    assert report.checkpoint.config["marker"] == "new" and report.counts.parameters == oracle
    assert [r.path for r in hub.requests("hub", r"config\.json$")] == ["/test/moving/resolve/main/config.json", f"/test/moving/resolve/{new_sha}/config.json"]
    assert hub.requests("hub", "^/api/") == []


def test_index_probe_that_keeps_failing_falls_back_to_the_listing(hub, tiny_sharded):
    """An index probe that spent its retries says nothing about what the repo holds: the listing decides, and since
    the repo has an index, the probe's error is the audit's (the index is not fetched a second time)."""
    folder, _ = tiny_sharded
    hub.add("test/flaky", load_dir(folder))
    hub.fault(r"model\.safetensors\.index\.json$", "status", times=99, status=503)
    with pytest.raises(CkptError) as e:
        audit("test/flaky")
    assert str(e.value) == "test/flaky/model.safetensors.index.json: gave up after 5 tries (HTTP 503)"
    assert len(hub.requests("hub", r"index\.json$")) == 5
    assert len(hub.requests("hub", "^/api/models/")) == 1


def test_shard_the_commit_lacks_is_found_by_its_404(hub, tiny_sharded):
    folder, _ = tiny_sharded
    files = load_dir(folder)
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    repo = hub.add("test/gone", {k: v for k, v in files.items() if k != shards[1]})
    with pytest.raises(CkptError) as e:
        audit("test/gone")
    assert str(e.value) == f"test/gone/model.safetensors.index.json: names shard {shards[1]!r}, which the repo does not hold at {repo.sha[:12]}"


def test_subfolder_url_and_revision_forms(hub, tiny_sharded):
    folder, oracle = tiny_sharded
    files = {f"weights/{k}": v for k, v in load_dir(folder).items()}
    repo = hub.add("test/nested", {**files, "README.md": b"# nested\n"})
    assert audit("hf://test/nested/weights").counts.parameters == oracle
    assert audit(f"hf://test/nested@{repo.sha}/weights").counts.parameters == oracle
    single = load_dir(FIXTURES / "gpt2")
    hub.add("test/single", single)
    url = f"{hub.url}/test/single/resolve/main/model.safetensors"
    r = audit(url)
    assert r.counts.parameters == 124_439_808
    assert r.checkpoint.config_file == "config.json"  # next to the file, as for a local file
    with pytest.raises(CkptError) as e:
        audit("test/nested", revision="v9")
    assert str(e.value) == "test/nested@v9: revision not found (HTTP 404)"
    with pytest.raises(CkptError) as e:
        audit("test/nested@v1", revision="v2")
    assert str(e.value) == "test/nested@v1: names revision 'v1' but --revision is 'v2'"


# -- the speculative first block, across its boundary ---------------------------------------------------------------


@pytest.mark.parametrize("delta", [-3, -2, -1, 0, 1, 2, 3])
def test_header_sizes_across_the_first_block(hub, delta):
    n = FIRST_BLOCK - 8 + delta  # header length N; the first block holds 8 + N bytes exactly when delta <= 0
    head, size = safetensors_bytes({"w": ("F32", [512, 512]), "b": ("F32", [512])}, header_len=n)
    hub.add("test/boundary", {"model.safetensors": Virtual(head, size)})
    report = audit("test/boundary")
    assert report.counts.stored_elements == 512 * 512 + 512
    f = report.checkpoint.files[0]
    assert (f.header_bytes, f.size) == (n, size)
    cdn = hub.requests("cdn")
    if delta <= 0:
        assert [r.range for r in cdn] == [f"bytes=0-{FIRST_BLOCK - 1}"]
        assert f.bytes_read == FIRST_BLOCK
    else:  # exactly the rest, straight to the CDN location (no second redirect)
        assert [r.range for r in cdn] == [f"bytes=0-{FIRST_BLOCK - 1}", f"bytes={FIRST_BLOCK}-{8 + n - 1}"]
        assert f.bytes_read == 8 + n
    assert len(hub.requests("hub", "model.safetensors$")) == 1


# -- auth ------------------------------------------------------------------------------------------------------------


def test_private_repo_needs_a_token(hub, monkeypatch, tmp_path):
    hub.add("org/private", load_dir(FIXTURES / "gpt2"), private=True)
    runner = CliRunner()
    r = runner.invoke(main, ["org/private"])
    assert r.exit_code == 1
    assert r.stderr == "Error: org/private: repository not found (HTTP 401); if it is private or gated, pass --token, set HF_TOKEN, or run `hf auth login`\n"
    assert r.stdout == ""
    r = runner.invoke(main, ["org/private", "--token", "hf_wrong"])
    assert (r.exit_code, r.stderr) == (1, "Error: org/private: repository not found (HTTP 404)\n")
    hub.reset_log()
    r = runner.invoke(main, ["org/private", "--token", hub.token, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["targets"][0]["parameters"] == 124_439_808
    assert all(x.auth for x in hub.requests("hub")) and not any(x.auth for x in hub.requests("cdn"))
    monkeypatch.setenv("HF_TOKEN", hub.token)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "fresh"))  # no cached entry: HF_TOKEN alone must open it
    assert audit("org/private").counts.parameters == 124_439_808


def test_gated_repo_says_how_to_get_access(hub):
    hub.add("org/gated", load_dir(FIXTURES / "gpt2"), gated=True)
    r = CliRunner().invoke(main, ["org/gated"])
    assert r.exit_code == 1
    assert r.stderr == "Error: org/gated: gated repository (HTTP 401): accept its terms on the Hub, then pass --token, set HF_TOKEN, or run `hf auth login`\n"


def test_not_found_says_repo_revision_or_file(hub):
    r = CliRunner().invoke(main, ["org/missing", "openai-community/gpt2", f"{hub.url}/openai-community/gpt2/resolve/main/nope.safetensors"])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        "Error: org/missing: repository not found (HTTP 401); if it is private or gated, pass --token, set HF_TOKEN, or run `hf auth login`",
        "Error: openai-community/gpt2/nope.safetensors: no such file at main",
    ]
    assert "124,439,808" in r.stdout  # the good target is still reported


def test_repo_without_checkpoint_says_what_it_holds(hub):
    hub.add("org/tf-only", {"README.md": b"x", "config.json": b"{}", "tf_model.h5": b"\x89HDF"})
    with pytest.raises(CkptError) as e:
        audit("org/tf-only")
    assert str(e.value) == "org/tf-only: no checkpoint file here (holds: README.md, config.json, tf_model.h5)"
    # a diffusers pipeline: the weights are in subfolders, which are named so the user sees where to point
    st_head, _ = safetensors_bytes({"w": ("F32", [2])})
    hub.add("org/pipeline", {"model_index.json": b"{}", "unet/diffusion_pytorch_model.safetensors": st_head, "vae/config.json": b"{}"})
    with pytest.raises(CkptError) as e:
        audit("org/pipeline")
    assert str(e.value) == "org/pipeline: no checkpoint file here (holds: model_index.json, unet/, vae/)"
    assert audit("hf://org/pipeline/unet").counts.parameters == 2


# -- faults ----------------------------------------------------------------------------------------------------------


def test_429_then_success_honours_retry_after(hub):
    hub.fault(r"/api/models/", "status", times=1, status=429, headers={"Retry-After": "0"})
    report = audit("openai-community/gpt2")
    assert report.counts.parameters == 124_439_808
    assert [r.status for r in hub.requests("hub", "^/api/models/")] == [429, 200]
    assert report.checkpoint.origin["requests"] == 6


def test_503_twice_then_success_and_503_forever(hub):
    hub.fault(r"config\.json$", "status", times=2, status=503)
    assert audit("openai-community/gpt2").checkpoint.config["n_layer"] == 12
    assert [r.status for r in hub.requests("hub", r"config\.json$")] == [503, 503, 200]
    hub.fault(r"/api/models/openai-community/gpt2-medium/", "status", times=99, status=503)
    with pytest.raises(CkptError) as e:
        audit("openai-community/gpt2-medium")
    assert str(e.value) == "openai-community/gpt2-medium: gave up after 5 tries (HTTP 503)"
    assert len(hub.requests("hub", "^/api/models/openai-community/gpt2-medium/")) == 5


def test_long_retry_after_fails_at_once(hub):
    hub.fault(r"/api/models/", "status", times=9, status=429, headers={"Retry-After": "3600"})
    r = CliRunner().invoke(main, ["openai-community/gpt2"])
    assert (r.exit_code, r.stderr) == (1, "Error: openai-community/gpt2: rate limited (HTTP 429): the server asks to retry after 3600 s\n")
    assert len(hub.requests("hub", "^/api/models/")) == 1


def test_connection_reset_mid_body_is_retried(hub):
    hub.fault(r"model\.safetensors$", "reset", times=1, host="cdn")
    report = audit("openai-community/gpt2")
    assert report.counts.parameters == 124_439_808
    cdn = hub.requests("cdn")
    assert len(cdn) == 2 and 0 < cdn[0].sent < 14_347 and cdn[1].sent == 14_347


def test_server_ignoring_range_is_read_only_as_far_as_needed(hub):
    elements = 64 * 1024 * 1024
    head, size = safetensors_bytes({"w": ("F32", [elements])}, header_len=200)  # a 256 MB answer to a Range request
    hub.add("test/norange", {"model.safetensors": Virtual(head, size)})
    hub.fault(r"model\.safetensors$", "ignore-range", times=9)
    report = audit("test/norange")
    assert report.counts.stored_elements == elements
    f = report.checkpoint.files[0]
    assert f.bytes_read == FIRST_BLOCK
    assert [(x.kind, x.message) for x in report.checkpoint.findings] == [
        ("range-ignored", f"test/norange/model.safetensors: the server ignored Range and sent the whole file; read {FIRST_BLOCK} bytes, then closed the connection")
    ]
    served = hub.requests("hub", r"model\.safetensors$")
    assert [r.status for r in served] == [200]
    assert served[0].sent < size // 4  # the server could not push the body: the client closed the connection


def test_content_range_must_match(hub):
    # A 206 whose Content-Range disagrees with the listing's size is refused, not trusted.
    head, size = safetensors_bytes({"w": ("F32", [8])})
    hub.add("test/liar", {"model.safetensors": Virtual(head, size)})
    from ckptcount.sources.http import HttpFile, HubClient

    client = HubClient(hub.url)
    f = HttpFile(client, f"{hub.url}/test/liar/resolve/main/model.safetensors", "model.safetensors", "test/liar/model.safetensors", size=size + 1)
    with pytest.raises(CkptError) as e:
        f.read(0, 8)
    assert str(e.value) == f"test/liar/model.safetensors: the server says the file is {size} bytes but the listing says {size + 1}"


# -- index paths are untrusted ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shard, message",
    [
        ("../other/model.safetensors", "path '../other/model.safetensors' is not a plain relative path inside the repo"),
        ("/etc/passwd", "path '/etc/passwd' is not a plain relative path inside the repo"),
        ("sub/model-00001-of-00001.safetensors", "shard 'sub/model-00001-of-00001.safetensors' is not a file next to the index"),
        ("model-00009-of-00009.safetensors", "names shard 'model-00009-of-00009.safetensors', which the repo does not hold at "),
    ],
)
def test_index_names_that_escape_or_do_not_exist(hub, shard, message):
    index = json.dumps({"metadata": {}, "weight_map": {"w": shard}}).encode()
    head, size = safetensors_bytes({"w": ("F32", [4])})
    repo = hub.add("test/evil", {"model.safetensors.index.json": index, "sub/model-00001-of-00001.safetensors": Virtual(head, size)})
    with pytest.raises(CkptError) as e:
        audit("test/evil")
    expected = f"test/evil/model.safetensors.index.json: {message}" + (repo.sha[:12] if message.endswith("at ") else "")
    assert str(e.value) == expected
    assert hub.requests("cdn") == []  # nothing was fetched for it


# -- cache and offline -----------------------------------------------------------------------------------------------


def test_cache_second_audit_one_request_sha_none_offline_none(hub, monkeypatch, tmp_path):
    first = audit("openai-community/gpt2-xl")
    sha = first.checkpoint.origin["sha"]
    hub.reset_log()
    again = audit("openai-community/gpt2-xl")
    assert [r.path for r in hub.settled()] == ["/api/models/openai-community/gpt2-xl/revision/main"]
    assert again.checkpoint.origin["cached"] is True
    assert _comparable(again) == _comparable(first)
    hub.reset_log()
    assert audit("openai-community/gpt2-xl", revision=sha).counts.parameters == 1_557_611_200
    assert hub.settled() == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = audit("openai-community/gpt2-xl")
    assert hub.settled() == [] and _comparable(offline) == _comparable(first)
    r = CliRunner().invoke(main, ["openai-community/gpt2-large"])
    assert (r.exit_code, r.stderr) == (1, "Error: openai-community/gpt2-large: HF_HUB_OFFLINE is set and openai-community/gpt2-large@main has no cached headers and no downloaded copy; audit it once online\n")
    assert hub.settled() == []
    leftovers = [p for p in (tmp_path / "hf").rglob(".tmp-*")]
    assert leftovers == []


def test_cache_follows_a_moved_branch_and_survives_corruption(hub, tmp_path):
    audit("openai-community/gpt2")
    repo = hub.repos["openai-community/gpt2"]
    medium = load_dir(FIXTURES / "gpt2-medium")
    repo.commits[repo.sha] = dict(repo.files)
    repo.files, repo.sha = medium, "f" * 40  # main now points at a new commit
    hub.reset_log()
    assert audit("openai-community/gpt2").counts.parameters == 354_823_168
    assert len(hub.settled()) > 1  # resolved, then fetched
    for entry in (tmp_path / "hf" / "ckptcount").rglob("*.entry"):
        entry.write_text("{not json")
    hub.reset_log()
    assert audit("openai-community/gpt2").counts.parameters == 354_823_168
    assert len(hub.requests("cdn")) == 1


# -- preflight -------------------------------------------------------------------------------------------------------


def test_preflight_json_and_checks(hub):
    runner = CliRunner()
    r = runner.invoke(main, ["openai-community/gpt2", "--format", "json", "--dtype", "bf16", "--fits", "1GiB", "--max-size", "20GB"])
    assert r.exit_code == 0, r.stderr
    pf = json.loads(r.stdout)["targets"][0]["preflight"]
    stored = 137_022_720  # FACTS: stored elements, all F32
    assert pf == {
        "bytes_by_format": {"safetensors": 14_347},
        "bytes_by_format_covers": "every file",
        "download_bytes": 14_347,
        "memory_bytes": {"stored": stored * 4, "bf16": stored * 2},
        "checks": [
            {"option": "--max-size", "limit": 20 * 10**9, "value": 14_347, "measures": "download", "ok": True},
            {"option": "--fits", "limit": 2**30, "value": stored * 2, "measures": "memory at bf16", "ok": True},
        ],
    }
    r = runner.invoke(main, ["openai-community/gpt2", "openai-community/gpt2-xl", "--dtype", "int4", "--fits", "500MB"])
    assert r.exit_code == 3
    assert r.stderr == "Check failed: openai-community/gpt2-xl: memory at int4 803,971,424 B (0.80 GB, 0.75 GiB) exceeds --fits 500,000,000 B (0.50 GB, 0.47 GiB)\n"
    assert "memory at int4" in r.stdout and "FAILED" in r.stdout
    r = runner.invoke(main, ["openai-community/gpt2", "--max-size", "12kB"])
    assert r.exit_code == 3
    assert r.stderr == "Check failed: openai-community/gpt2: download 14,347 B (0.00 GB, 0.00 GiB) exceeds --max-size 12,000 B (0.00 GB, 0.00 GiB)\n"
    r = runner.invoke(main, ["openai-community/gpt2", "--fits", "lots"])
    assert r.exit_code == 2 and "'lots' is not a size" in r.stderr


def test_mistyped_local_path_says_no_such_file_first(hub, tmp_path, monkeypatch):
    """`runs/ckpt-7` with a `runs/` folder here is a local typo: say so, and what the Hub said."""
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["runs/ckpt-7"])
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: runs/ckpt-7: no such file or directory (nor a Hub repo: ")
    assert r.stderr.count("\n") == 1
    r = CliRunner().invoke(main, ["elsewhere/ckpt-7"])  # no such folder here: a Hub repo id, reported as such
    assert r.exit_code == 1 and "no such file or directory" not in r.stderr
