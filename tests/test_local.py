"""Local targets: directories, sharded sets and their index, and paths that try to leave the checkpoint."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import safetensors_head

from ckptcount import audit
from ckptcount.errors import CkptError, HeaderError, ShardIndexError, TargetNotFound, UnsafePath
from ckptcount.targets.local import cross_check
from ckptcount.formats.base import FileRead
from ckptcount.records import FileRecord, TensorRecord


def st_file(tensors: dict[str, tuple[str, list[int]]], metadata=None) -> bytes:
    """A complete safetensors file (zero data) from {name: (dtype, shape)}."""
    head, data = safetensors_head(tensors, metadata=metadata)
    return head + b"\0" * data


def write_sharded(d, shards: dict[str, dict], weight_map: dict[str, str] | None = None, total_size=None):
    d.mkdir(exist_ok=True)
    for name, tensors in shards.items():
        (d / name).write_bytes(st_file(tensors))
    if weight_map is None:
        weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    meta = {} if total_size is None else {"total_size": total_size}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": meta, "weight_map": weight_map}))


S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
A = {"a.weight": ("F32", [4, 4])}
B = {"b.weight": ("F32", [4]), "b.bias": ("F32", [4])}


def test_sharded_union_and_index_agreement(tmp_path):
    write_sharded(tmp_path, {S1: A, S2: B}, total_size=96)
    r = audit(str(tmp_path))
    assert r.counts.parameters == 24 and r.checkpoint.findings == ()
    assert [f.path for f in r.checkpoint.files] == [S1, S2]


def test_index_disagreements_are_reported(tmp_path):
    write_sharded(tmp_path, {S1: {**A, "dup.weight": ("F32", [2])}, S2: {**B, "dup.weight": ("F32", [2])}},
                  weight_map={"a.weight": S1, "b.weight": S1, "ghost.weight": S2, "dup.weight": S1}, total_size=1)
    (tmp_path / "model-00003-of-00003.safetensors").write_bytes(st_file(A))
    r = audit(str(tmp_path))
    messages = sorted((f.kind, f.message) for f in r.checkpoint.findings)
    assert messages == [
        ("duplicate-tensor", "tensor 'dup.weight' is stored in 2 shards: model-00001-of-00002.safetensors, model-00002-of-00002.safetensors"),
        ("index-mismatch", "model.safetensors.index.json does not list 'b.bias', stored in model-00002-of-00002.safetensors"),
        ("index-mismatch", "model.safetensors.index.json maps 'b.weight' to model-00001-of-00002.safetensors but that shard does not hold it (found in model-00002-of-00002.safetensors)"),
        ("index-mismatch", "model.safetensors.index.json maps 'ghost.weight' to model-00002-of-00002.safetensors but that shard does not hold it"),
        ("index-mismatch", "model.safetensors.index.json: metadata.total_size is 1 but the shards hold 112 data bytes"),
        ("unreferenced-shard", "model-00003-of-00003.safetensors is not named by model.safetensors.index.json: not counted"),
    ]
    # union of the named shards, a tensor stored twice counted once
    assert r.counts.parameters == 16 + 4 + 4 + 2
    assert r.counts.stored_elements == 16 + 4 + 4 + 2 + 2


def test_cross_check_is_pure():
    rec = FileRecord("s1", 0, 0, 1, False)
    reads = {"s1": FileRead(rec, (TensorRecord("x", "F32", (1,), "s1", 0, 4),))}
    assert cross_check({"x": "s1"}, reads, "idx") == []
    (f,) = cross_check({"x": "s2"}, reads, "idx")
    assert f.message == "idx maps 'x' to s2 but that shard does not hold it (found in s1)"


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["s1", "s2", "s3"]), max_size=6),
    st.dictionaries(st.sampled_from(["s1", "s2", "s3"]), st.lists(st.sampled_from("abcdefg"), max_size=4, unique=True), max_size=3),
)
def test_agreement_is_decided_as_the_full_cross_check_decides_it(weight_map, stored):
    """local.agrees (C-level, the common case) is true exactly when the name-by-name cross-check finds nothing."""
    from ckptcount.targets.local import agrees

    reads = {s: FileRead(FileRecord(s, 0, 0, len(ns), False), tuple(TensorRecord(n, "F32", (1,), s) for n in ns)) for s, ns in stored.items()}
    assert agrees(weight_map, reads) == (cross_check(weight_map, reads, "idx") == [])
    if stored:  # and the index that says exactly where each stored name is agrees, empty shards and all
        first = {}
        for s, ns in stored.items():
            for n in ns:
                first.setdefault(n, s)
        exact = {n: s for s, ns in stored.items() for n in ns}
        assert agrees(exact, reads) == (first == exact)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "a\\..\\b.safetensors"])
def test_index_paths_that_leave_the_directory_are_rejected(tmp_path, shard):
    d = tmp_path / "ckpt"
    write_sharded(d, {S1: A}, weight_map={"a.weight": shard})
    (tmp_path / "outside.safetensors").write_bytes(st_file(A))
    with pytest.raises(UnsafePath, match="leaves the checkpoint directory|not a plain relative path"):
        audit(str(d))


def test_symlinked_shard_outside_the_directory_is_rejected(tmp_path):
    d = tmp_path / "ckpt"
    write_sharded(d, {S1: A})
    (tmp_path / "secret.safetensors").write_bytes(st_file(A))
    (d / S1).unlink()
    os.symlink(tmp_path / "secret.safetensors", d / S1)
    with pytest.raises(UnsafePath, match="resolves outside the checkpoint directory"):
        audit(str(d))


def test_fifo_as_shard_is_refused_without_blocking(tmp_path):
    d = tmp_path / "ckpt"
    write_sharded(d, {S1: A})
    (d / S1).unlink()
    os.mkfifo(d / S1)
    with pytest.raises(UnsafePath, match="not a regular file"):
        audit(str(d))


def test_bad_index_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(ShardIndexError, match="model.safetensors.index.json: has no 'weight_map' object"):
        audit(str(tmp_path))


def test_invalid_shard_names_the_shard(tmp_path):
    write_sharded(tmp_path, {S1: A, S2: B})
    (tmp_path / S2).write_bytes(b"\x05")
    with pytest.raises(HeaderError, match=rf"{S2}: file is 1 bytes, too short"):
        audit(str(tmp_path))


def test_directory_choices(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TargetNotFound, match=r"no checkpoint file here \(holds: nothing\)$"):
        audit(str(tmp_path / "empty"))
    # a folder of runs: the subfolders are named, after the files, so the user sees where to point
    for run in ("run-2", "run-1"):
        (tmp_path / "empty" / run).mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    with pytest.raises(TargetNotFound, match=r"no checkpoint file here \(holds: notes.txt, run-1/, run-2/\)$"):
        audit(str(tmp_path / "empty"))
    with pytest.raises(TargetNotFound, match="no such file or directory"):
        audit(str(tmp_path / "missing"))
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.safetensors").write_bytes(st_file(A))
    (two / "b.safetensors").write_bytes(st_file(B))
    with pytest.raises(TargetNotFound, match="2 .safetensors files and no index; name one: a.safetensors, b.safetensors"):
        audit(str(two))
    assert audit(str(two / "b.safetensors")).counts.parameters == 8
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "weights.safetensors").write_bytes(st_file(A))
    assert audit(str(lone)).counts.parameters == 16
    unindexed = tmp_path / "unindexed"
    unindexed.mkdir()
    (unindexed / S1).write_bytes(st_file(A))
    (unindexed / S2).write_bytes(st_file(B))
    r = audit(str(unindexed))
    assert r.counts.parameters == 24 and [f.kind for f in r.checkpoint.findings] == ["no-index"]


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(st_file(A))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(CkptError, match="config.json: not valid JSON"):
        audit(str(tmp_path))


def test_buffers_by_name_shape_and_dtype(tmp_path):
    """GPT-Neo/J/NeoX masks, BERT ids, rotary caches and BatchNorm statistics are buffers, not parameters."""
    tensors = {
        "gpt_neox.layers.0.attention.bias": ("F32", [1, 1, 4, 4]),
        "gpt_neox.layers.0.attention.masked_bias": ("F32", []),
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq": ("F32", [4]),
        "transformer.h.0.attn.attention.bias": ("F32", [1, 1, 4, 4]),
        "bert.embeddings.position_ids": ("I64", [1, 8]),
        "bn.running_mean": ("F32", [3]),
        "bn.running_var": ("F32", [3]),
        "bn.num_batches_tracked": ("I64", []),
        "qwen.layers.0.self_attn.q_proj.bias": ("F32", [4]),
        "transformer.h.0.attn.attention.out_proj.bias": ("F32", [4]),
    }
    (tmp_path / "m.safetensors").write_bytes(st_file(tensors))
    r = audit(str(tmp_path / "m.safetensors"))
    kinds = {c.tensor.name: c.kind for c in r.classified}
    assert [n for n, k in kinds.items() if k != "buffer"] == ["qwen.layers.0.self_attn.q_proj.bias", "transformer.h.0.attn.attention.out_proj.bias"]
    assert r.counts.biases.elements == 8
    assert {b.reason: b.tensors for b in r.counts.buffers} == {
        "causal mask": 3, "rotary/sinusoid cache": 1, "I64 tensor (integer/bool tensors are never parameters)": 2, "batchnorm statistics": 2,
    }


def test_integer_literals_past_pythons_digit_limit_are_invalid_json_not_a_crash():
    from ckptcount.analysis.config import parse_config
    from ckptcount.errors import ConfigError, ShardIndexError
    from ckptcount.targets.local import parse_index

    raw = b'{"weight_map": {"a": "x.safetensors"}, "metadata": {"total_size": ' + b"9" * 5000 + b"}}"
    with pytest.raises(ShardIndexError, match=r"^i\.json: not valid JSON \(ValueError\)$"):
        parse_index(raw, "i.json")
    with pytest.raises(ConfigError, match=r"^c\.json: not valid JSON \(ValueError\)$"):
        parse_config(b'{"vocab_size": ' + b"9" * 5000 + b"}", "c.json")


_index_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


_plain = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'), max_size=6)  # no escapes


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(_plain, _plain, max_size=5) | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=5) | _index_values,
    st.none() | st.fixed_dictionaries({"total_size": st.integers(0, 2**70)}) | _index_values,
    st.sampled_from(["", "", "extra", "weight_map", "metadata"]),
    st.booleans(),
    st.booleans(),
)
def test_index_decode_is_json_decode(weight_map, metadata, repeat, ascii_only, compact):
    """local._decode_index takes most indexes through msgspec: whatever it returns is what json.loads gives for the
    keys parse_index reads, and it raises what json.loads raises, for any weight_map and metadata values, an extra
    key, a repeated key, escaped or raw non-ASCII names."""
    from ckptcount.targets.local import _decode_index

    doc = {"weight_map": weight_map} if metadata is None else {"metadata": metadata, "weight_map": weight_map}
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    if repeat == "extra":
        text = '{"other": 1, ' + text[1:]
    elif repeat:
        text = "{" + json.dumps(repeat) + ": {}, " + text[1:]  # repeated: the last one counts
    raw = text.encode()

    def outcome(decode):
        try:
            obj = decode(raw)
        except (ValueError, RecursionError) as e:
            return type(e).__name__
        return obj.get("weight_map"), obj.get("metadata")

    assert outcome(_decode_index) == outcome(lambda b: json.loads(b.decode("utf-8")))


def test_index_decode_declines_to_msgspec_what_json_must_judge():
    from ckptcount.targets.local import _decode_index, _fast_index

    # what save_pretrained writes takes the msgspec path, with or without metadata
    for doc in ({"metadata": {"total_size": 8, "total_parameters": 2}, "weight_map": {"a": "s1", "b": "s2"}}, {"weight_map": {"a": "s1"}}):
        for indent in (None, 2):
            raw = json.dumps(doc, indent=indent).encode()
            assert _fast_index(raw) == {"weight_map": doc["weight_map"], "metadata": doc.get("metadata")}

    for raw in (
        b'{"weight_map": {"a": "s"}, "metadata": {"total_size": ' + b"9" * 5000 + b"}}",  # json's digit limit
        b'{"weight_map": {"a": "s"}, "other": ' + b"9" * 5000 + b"}",  # also in a key msgspec would skip
        b'{"weight_map": {"a": NaN}}',
        rb'{"weight_map": {"\u00e9": "s"}}',
        b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        try:
            expected = json.loads(raw)
        except (ValueError, RecursionError) as e:
            with pytest.raises(type(e)):
                _decode_index(raw)
        else:
            assert _decode_index(raw)["weight_map"] == expected["weight_map"]


@pytest.mark.parametrize("tied", [False, True])
def test_prefixed_output_head_llava_style(tmp_path, tied):
    """Older llava-style checkpoints keep the text model's head as `language_model.lm_head.weight`."""
    head, span = safetensors_head(
        {
            "language_model.model.embed_tokens.weight": ("F32", [16, 8]),
            "language_model.model.norm.weight": ("F32", [8]),
            "language_model.lm_head.weight": ("F32", [16, 8]),
        }
    )
    (tmp_path / "model.safetensors").write_bytes(head + bytes(span))
    config = {"architectures": ["LlavaForConditionalGeneration"], "text_config": {"tie_word_embeddings": tied}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = audit(str(tmp_path))
    components = {c.tensor.name: c.component for c in r.classified}
    assert components["language_model.lm_head.weight"] == "output_head"
    if not tied:
        assert r.ties == () and r.counts.parameters == 16 * 8 * 2 + 8
        assert r.counts.by_component["output_head"].elements == 16 * 8
    else:
        (g,) = r.ties
        assert g.names == ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight") and g.counted_once
        assert "head also stored" in g.evidence and r.counts.parameters == 16 * 8 + 8


def test_layer_and_expert_numbers_of_thousands_of_digits(tmp_path):
    """Layer and expert numbers come from names; past 4,300 digits Python's int() raises: neither may crash a count."""
    big = "9" * 5000
    head, span = safetensors_head(
        {
            f"h.{big}.mlp.c_fc.weight": ("F32", [4, 4]),
            "h.2.mlp.c_fc.weight": ("F32", [4, 4]),
            f"model.layers.0.mlp.experts.{big}.up_proj.weight": ("F32", [4, 4]),
            "model.layers.0.mlp.experts.1.up_proj.weight": ("F32", [4, 4]),
        }
    )
    (tmp_path / "model.safetensors").write_bytes(head + bytes(span))
    r = audit(str(tmp_path))
    assert r.counts.parameters == 64
    assert list(r.counts.by_layer) == ["0", "2", big]  # numeric order; the giant number last
    assert r.moe is not None and r.moe["routed_expert_parameters"] == 32


def test_a_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    # as a non-root user meets a folder without read permission (the suite may run as root, which reads anything)
    from pathlib import Path

    from click.testing import CliRunner

    from ckptcount.cli import main

    write_sharded(tmp_path / "locked", {S1: A, S2: B})
    real = Path.iterdir

    def iterdir(self):
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["locked"])
    assert (r.exit_code, r.stderr) == (1, "Error: locked: cannot list the folder: Permission denied\n")
    r = CliRunner().invoke(main, ["locked/model.safetensors.index.json"])
    assert (r.exit_code, r.stderr) == (1, "Error: locked: cannot list the folder: Permission denied\n")


def test_the_index_total_parameters_is_shown_never_used(tmp_path, tiny_sharded):
    """transformers writes model.num_parameters() as metadata.total_parameters: shown beside the count, which comes
    from the headers; a disagreement is a note under the table, not a finding (the number is author-written)."""
    import json as _json

    from click.testing import CliRunner

    from ckptcount.cli import main

    folder, oracle = tiny_sharded
    r = CliRunner().invoke(main, [str(folder), "--format", "json"])
    d = _json.loads(r.stdout)["targets"][0]
    assert d["index_total_parameters"] == d["parameters"] == oracle
    assert "index says" not in CliRunner().invoke(main, [str(folder)]).stdout

    write_sharded(tmp_path / "m", {S1: A, S2: B})
    index = tmp_path / "m" / "model.safetensors.index.json"
    doc = _json.loads(index.read_text())
    doc["metadata"]["total_parameters"] = 999
    index.write_text(_json.dumps(doc))
    r = CliRunner().invoke(main, [str(tmp_path / "m"), "--strict"])
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-1] == "m: the index says 999 parameters (metadata.total_parameters, written by whoever saved it); the headers give 24"
    d = _json.loads(CliRunner().invoke(main, [str(tmp_path / "m"), "--format", "json"]).stdout)["targets"][0]
    assert (d["index_total_parameters"], d["parameters"], d["findings"]) == (999, 24, [])
    for bad in ("999", -1, True, None, 1.5):  # not a count: not shown
        doc["metadata"]["total_parameters"] = bad
        index.write_text(_json.dumps(doc))
        assert "index_total_parameters" not in _json.loads(CliRunner().invoke(main, [str(tmp_path / "m"), "--format", "json"]).stdout)["targets"][0]
