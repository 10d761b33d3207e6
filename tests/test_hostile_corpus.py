"""The committed hostile corpus (tests/hostile/): every attack ends in its expected one-line error and exit code, fast,
with bounded memory, and nothing is executed. The corpus is regenerated and compared byte for byte with what is
committed, so the generator (which names each attack) and the files cannot drift apart."""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptcount.cli import main

HOSTILE = Path(__file__).resolve().parent / "hostile"
MANIFEST = json.loads((HOSTILE / "manifest.json").read_text())
ATTACKS = [c for c in MANIFEST if not c.get("control")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A copy of the corpus (symlinks kept as symlinks) with what git cannot hold made in it."""
    dest = tmp_path_factory.mktemp("hostile") / "corpus"
    shutil.copytree(HOSTILE, dest, symlinks=True)
    for case in MANIFEST:
        fifo = case.get("setup", {}).get("fifo")
        if fifo:
            os.mkfifo(dest / fifo)
    return dest


def test_manifest_lists_every_attack_the_issue_names():
    names = {c["name"] for c in MANIFEST}
    required = {
        "header-len-2pow63", "header-100MB-plus-1", "json-nesting-100k", "invalid-utf8", "duplicate-keys", "overlapping-offsets",
        "holed-offsets", "overflowing-offsets", "unknown-dtype", "negative-dims", "shape-product-overflow", "index-path-traversal",
        "zip-slip", "pickle-rce", "symlink-escape", "fifo-shard", "dev-zero-shard", "dev-zero-file",
    }
    assert required <= names
    assert len(names) == len(MANIFEST)


@pytest.mark.parametrize("decoder", ["json", "msgspec"])
@pytest.mark.parametrize("case", MANIFEST, ids=[c["name"] for c in MANIFEST])
def test_each_case_gives_its_line_and_exit_code(corpus, monkeypatch, case, decoder):
    """Each case with the JSON decoding a process starts with (json: these files are small), and with the msgspec
    paths it takes after its first MiB of headers (ckptcount.support.fastjson): the same line, the same code."""
    from ckptcount.support import fastjson

    monkeypatch.setattr(fastjson, "THRESHOLD", 0 if decoder == "msgspec" else 1 << 60)
    monkeypatch.chdir(corpus)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        r = CliRunner().invoke(main, [case["target"], *case["args"]])
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10
    assert peak < 50_000_000  # the 2**63-byte header and the /dev/zero shard allocate nothing of what they declare
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == case["exit"], r.output
    assert r.stderr == (case["stderr"] + "\n" if case["stderr"] else "")
    if case["exit"] == 1:
        assert r.stdout == ""
        assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    if "stdout_line" in case:
        assert case["stdout_line"] in r.stdout.splitlines()


def test_pickle_rce_is_never_executed(corpus, monkeypatch, tmp_path):
    monkeypatch.chdir(corpus)
    sentinel = Path("/tmp/pwn")
    existed = sentinel.exists()
    r = CliRunner().invoke(main, ["pickle-rce.pt", "--format", "json"])
    assert r.exit_code == 0
    assert sentinel.exists() == existed  # the payload is `touch /tmp/pwn`
    findings = json.loads(r.stdout)["targets"][0]["findings"]
    assert [f["kind"] for f in findings] == ["unsafe-pickle"]


def test_pickle_rce_payload_is_live_under_pickle(corpus, monkeypatch):
    """Control: the committed data.pkl really calls os.system under pickle.loads (with os.system swapped for a spy)."""
    import pickle
    import zipfile

    with zipfile.ZipFile(corpus / "pickle-rce.pt") as z:
        pkl = z.read("archive/data.pkl")
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd) or 0)
    assert pickle.loads(pkl) == {"evil": 0}
    assert calls == ["touch /tmp/pwn"]


def test_all_attacks_in_one_run_every_line_and_exit_1(corpus, monkeypatch):
    """One failing target never stops the others: all the error cases in one call, one line each, then exit 1."""
    monkeypatch.chdir(corpus)
    errors = [c for c in ATTACKS if c["exit"] == 1]
    r = CliRunner().invoke(main, [c["target"] for c in errors] + ["outside.safetensors"])
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [c["stderr"] for c in errors]
    assert "outside.safetensors" in r.stdout  # the good target is still reported


def test_corpus_is_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", HOSTILE / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    regenerated = mod.write(tmp_path)
    assert regenerated == MANIFEST
    for case in MANIFEST:
        for rel in case["files"]:
            ours, committed = tmp_path / rel, HOSTILE / rel
            if committed.is_symlink():
                assert os.readlink(ours) == os.readlink(committed), rel
            else:
                assert ours.read_bytes() == committed.read_bytes(), rel
    # every file in tests/hostile belongs to a case (no stray leftovers)
    listed = {rel for c in MANIFEST for rel in c["files"]} | {"manifest.json", "make_corpus.py"}
    present = {str(p.relative_to(HOSTILE)) for p in HOSTILE.rglob("*") if (p.is_file() or p.is_symlink()) and "__pycache__" not in p.parts}
    assert present == listed
