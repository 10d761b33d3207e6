"""PyTorch zip (and legacy) checkpoints read without executing pickle, checked against torch itself:

* names, shapes and dtypes == ``torch.load(path, mmap=True, weights_only=True)``;
* tie groups == the names whose tensors share ``untyped_storage().data_ptr()`` in that load;
* parameters == ``sum(p.numel() for p in model.parameters())`` of the model that was saved;
* a sharded ``pytorch_model.bin.index.json`` written by huggingface_hub agrees with the shards (its total_size
  counts each shared storage once);
* reads: a counting ByteSource proves two or three small reads per file, and the local Hub stand-in counts requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from click.testing import CliRunner  # noqa: E402

from ckptcount import CkptError, audit, load  # noqa: E402
from ckptcount.cli import main  # noqa: E402
from ckptcount.formats.base import format_of  # noqa: E402
from ckptcount.formats.dispatch import read_file  # noqa: E402
from ckptcount.sources.files import LocalFile  # noqa: E402

T = transformers
DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
    torch.complex64: "C64", torch.complex128: "C128", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


class Mixed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(10))
        self.register_buffer("b", self.a.data[5:])  # a view: b = a[5:]
        self.w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float16))
        self.bf = torch.nn.Parameter(torch.randn(2, 2, dtype=torch.bfloat16))
        self.register_buffer("steps", torch.tensor(7))  # I64 scalar
        self.register_buffer("mask", torch.ones(4, dtype=torch.bool))
        self.register_buffer("f8", torch.zeros(3, dtype=torch.float8_e4m3fn))
        self.register_buffer("u16", torch.zeros(2, dtype=torch.uint16))
        self.register_buffer("cplx", torch.zeros(2, dtype=torch.complex128))
        self.register_buffer("wt", self.w.data.t())  # a transposed view: the same elements


MODELS = {
    "gpt2-tied": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64)),
    "t5": lambda: T.T5ForConditionalGeneration(T.T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=96)),
    "bert-mlm": lambda: T.BertForMaskedLM(
        T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=96)
    ),
    "llama-untied": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=96, tie_word_embeddings=False)
    ),
    "mixed-views": Mixed,
}


def torch_oracle(path: Path) -> tuple[dict[str, tuple[tuple[int, ...], str]], set[frozenset[str]]]:
    """names -> (shape, dtype) and the groups of names sharing one storage, as torch itself loads the file."""
    with open(path, "rb") as f:
        legacy = not f.read(4).startswith(b"PK")
    sd = torch.load(path, mmap=not legacy, weights_only=True)  # mmap needs the zip format
    flat = {}

    def visit(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                visit(f"{prefix}.{i}" if prefix else str(i), v)

    visit("", sd)
    shapes = {k: (tuple(v.shape), DTYPES[v.dtype]) for k, v in flat.items()}
    by_ptr: dict[int, set[str]] = {}
    for k, v in flat.items():
        by_ptr.setdefault(v.untyped_storage().data_ptr(), set()).add(k)
    return shapes, {frozenset(g) for g in by_ptr.values() if len(g) > 1}


def ours(path: Path):
    ck = load(str(path))
    shapes = {t.name: (t.shape, t.dtype) for t in ck.tensors}
    return ck, shapes, {frozenset(g.names) for g in ck.ties}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each model saved with torch.save as a zip and (pre-1.6 format) legacy file; the model kept for its counts."""
    out = {}
    root = tmp_path_factory.mktemp("torch")
    torch.manual_seed(0)
    for name, build in MODELS.items():
        model = build()
        sd = model.state_dict()
        d = root / name
        d.mkdir()
        torch.save(sd, d / "pytorch_model.bin")
        torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)
        out[name] = (model, d)
    return out


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("file", ["pytorch_model.bin", "legacy.pt"])
def test_names_shapes_dtypes_and_ties_match_torch_load(saved, name, file):
    model, d = saved[name]
    if name == "mixed-views" and file == "legacy.pt":
        # torch writes float8/uint16 storages untyped in the legacy format and then cannot load them itself
        with pytest.raises(CkptError, match="untyped storage in a legacy file"):
            load(str(d / file))
        return
    shapes, groups = torch_oracle(d / file)
    ck, got_shapes, got_groups = ours(d / file)
    assert got_shapes == shapes
    assert got_groups == groups
    assert ck.format == ("pytorch" if file.endswith(".bin") else "pytorch-legacy")


@pytest.mark.parametrize("name", ["gpt2-tied", "t5", "bert-mlm", "llama-untied"])
def test_parameters_equal_the_models_count(saved, name):
    model, d = saved[name]
    report = audit(str(d / "pytorch_model.bin"))
    assert report.counts.parameters == sum(p.numel() for p in model.parameters())
    # the tie groups the file shows are exactly the names that share one Parameter in the model
    by_id: dict[int, set[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), set()).add(n)
    shared = [g for g in report.ties if "shared storage" in g.evidence]
    assert {frozenset(g.names) for g in shared} == {frozenset(g) for g in by_id.values() if len(g) > 1}
    assert all(g.counted_once for g in shared)
    # without config.json an untied embedding/head pair of one shape is at most a candidate, counted twice
    assert all(not g.counted_once for g in report.ties if g not in shared)
    assert report.checkpoint.findings == ()
    # stored: each storage once, as torch loads it (tied names view one storage)
    sd = torch.load(d / "pytorch_model.bin", mmap=True, weights_only=True)
    storages = {v.untyped_storage().data_ptr(): v for v in sd.values()}
    assert report.counts.stored_elements == sum(v.numel() for v in storages.values())
    assert sum(v.bytes for v in report.counts.by_dtype.values()) == sum(v.untyped_storage().nbytes() for v in storages.values())
    assert audit(str(d / "pytorch_model.bin"), dtype="fp16").preflight.memory_stored == sum(v.untyped_storage().nbytes() for v in storages.values())


def test_view_counted_once_as_the_tensor_it_views(saved):
    model, d = saved["mixed-views"]
    report = audit(str(d / "pytorch_model.bin"))
    groups = {g.names[0]: g for g in report.ties}
    assert groups["a"].names == ("a", "b") and groups["a"].counted_once
    assert "views inside a" in groups["a"].evidence
    kinds = sorted(f.kind for f in report.checkpoint.findings)
    assert kinds == ["storage-view", "storage-view"]  # b inside a; wt = w.t() spans the same elements as w
    assert any("'b' elements [5, 10)" in f.message for f in report.checkpoint.findings)
    # float parameters once each: a (b is its view), w (wt is its transpose), bf; f8/cplx are float buffers the file
    # cannot tell from parameters, integer/bool tensors never are
    floats = {n: t for n, t in model.state_dict().items() if t.is_floating_point() or t.is_complex()}
    expected = sum(t.numel() for n, t in floats.items() if n not in ("b", "wt"))
    assert report.counts.parameters == expected
    dt = {t.name: t for t in report.checkpoint.tensors}
    assert dt["cplx"].nbytes == 2 * 16 and dt["f8"].nbytes == 3


def test_reads_are_few_and_small(tmp_path):
    """A counting ByteSource: the tail, then data.pkl (the central directory sits in the tail): two small reads."""
    model = MODELS["gpt2-tied"]()
    big = torch.nn.Linear(512, 1024)  # ~2 MB of data after the pickle
    sd = dict(model.state_dict())
    sd.update({f"extra.{k}": v for k, v in big.state_dict().items()})
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    src = LocalFile(path)
    read = read_file(src, "model.pt", str(path))
    assert src.reads == 2
    assert src.bytes_read < 20_000 < src.size() // 100
    assert read.record.bytes_read == src.bytes_read and read.record.format == "pytorch"
    assert {t.name for t in read.tensors} == set(sd)


def test_many_entries_central_directory_outside_the_tail_costs_one_more_read(tmp_path):
    sd = {f"layer.{i}.weight": torch.zeros(2) for i in range(300)}  # ~300 entries: directory > 8 KiB
    torch.save(sd, tmp_path / "m.bin")
    src = LocalFile(tmp_path / "m.bin")
    read = read_file(src, "m.bin", "m.bin")
    assert src.reads == 3 and len(read.tensors) == 300


def test_training_checkpoint_walked_to_full_paths_optimizer_state_separate(tmp_path):
    model = MODELS["gpt2-tied"]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]]))[0].sum().backward()
    opt.step()
    ckpt = {
        "epoch": 3,
        "global_step": 10,
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "optimizer_states": [opt.state_dict()],  # Lightning
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25)}},
        "hyper_parameters": {"lr": 1e-3, "name": "tiny"},
    }
    path = tmp_path / "epoch=3.ckpt"
    torch.save(ckpt, path)
    shapes, groups = torch_oracle(path)
    ck, got, got_groups = ours(path)
    assert got == shapes and got_groups == groups
    report = audit(str(path))
    assert report.counts.parameters == sum(p.numel() for p in model.parameters())
    reasons = {b.reason: b for b in report.counts.buffers}
    opt_elems = sum(v.numel() for s in opt.state_dict()["state"].values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point())
    assert reasons["optimizer state"].elements == opt_elems  # exp_avg, exp_avg_sq and the F32 'step' scalars
    assert reasons["training state"].names == ("callbacks.ModelCheckpoint{'monitor': 'val_loss'}.best_model_score",)
    assert report.checkpoint.findings == ()  # only allowlisted globals in this file
    components = {c.tensor.name: c.component for c in report.classified}  # roles found under the walked root too
    assert components["state_dict.model.lm_head.weight"] == "output_head"
    assert components["state_dict.model.transformer.wte.weight"] == "token_embedding"


def test_bare_optimizer_state_dict_is_not_parameters(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    report = audit(str(tmp_path / "optimizer.pt"))
    assert report.counts.parameters == 0
    assert {t.name for t in report.checkpoint.tensors} == {"state.0.momentum_buffer", "state.1.momentum_buffer"}


def test_directory_config_and_trainer_files(tmp_path, saved):
    model, d = saved["gpt2-tied"]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes((d / "pytorch_model.bin").read_bytes())
    model.config.to_json_file(folder / "config.json")
    torch.save({"lr": torch.tensor(1.0)}, folder / "optimizer.pt")  # Trainer state: not the weights
    torch.save({"x": 1}, folder / "training_args.bin")
    report = audit(str(folder))
    assert [f.path for f in report.checkpoint.files] == ["pytorch_model.bin"]
    assert report.counts.parameters == sum(p.numel() for p in model.parameters())
    assert report.checkpoint.findings == ()
    assert "shared storage" in report.ties[0].evidence and "tie_word_embeddings" in report.ties[0].evidence


def test_safetensors_preferred_bin_reported(tmp_path, saved):
    from safetensors.torch import save_model

    model, d = saved["llama-untied"]
    folder = tmp_path / "both"
    folder.mkdir()
    save_model(model, str(folder / "model.safetensors"))
    (folder / "pytorch_model.bin").write_bytes((d / "pytorch_model.bin").read_bytes())
    report = audit(str(folder))
    assert report.checkpoint.format == "safetensors"
    assert [f.kind for f in report.checkpoint.findings] == ["ignored-format"]


def test_sharded_bin_index_written_by_huggingface_hub(tmp_path):
    from huggingface_hub import split_torch_state_dict_into_shards

    model = MODELS["gpt2-tied"]()
    sd = model.state_dict()
    split = split_torch_state_dict_into_shards(sd, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=40_000)
    assert split.is_sharded
    for shard, names in split.filename_to_tensors.items():
        torch.save({n: sd[n] for n in names}, tmp_path / shard)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    report = audit(str(tmp_path))
    assert len(report.checkpoint.files) == len(split.filename_to_tensors) > 1
    assert report.checkpoint.findings == ()  # total_size counts the tied storage once, as we do
    assert report.counts.parameters == sum(p.numel() for p in model.parameters())


def test_format_of_suffixes():
    for n in ("pytorch_model.bin", "x.pt", "x.pth", "last.ckpt", "pytorch_model-00001-of-00002.bin"):
        assert format_of(n) == "pytorch"
    assert format_of("pytorch_model.bin.index.json") == "pytorch"
    assert format_of("model.safetensors") == "safetensors"


def test_cli_json(saved):
    _, d = saved["bert-mlm"]
    r = CliRunner().invoke(main, [str(d / "pytorch_model.bin"), "--format", "json", "--strict"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["targets"][0]
    assert out["format"] == "pytorch" and out["findings"] == []
    f = out["files"][0]
    assert 0 < f["bytes_read"] < f["bytes"]
    assert sorted(sorted(t["names"]) for t in out["ties"]) == [
        ["bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"],
        ["cls.predictions.bias", "cls.predictions.decoder.bias"],
    ]


def test_remote_bin_by_range_requests(tmp_path, stand_in_hub, saved):
    model = MODELS["gpt2-tied"]()
    big = torch.nn.Linear(512, 1024)
    sd = dict(model.state_dict())
    sd.update({f"extra.{k}": v for k, v in big.state_dict().items()})
    path = tmp_path / "pytorch_model.bin"
    torch.save(sd, path)
    raw = path.read_bytes()
    server = stand_in_hub
    server.add("some-org/old-model", {"pytorch_model.bin": raw, "config.json": json.dumps(model.config.to_dict()).encode()})
    report = audit("some-org/old-model")
    gets = [r for r in server.requests(path=r"pytorch_model\.bin$") if r.method == "GET"]
    sent = sum(r.sent for r in gets)
    assert report.checkpoint.format == "pytorch"
    assert {t.name for t in report.checkpoint.tensors} == set(sd)
    assert report.counts.parameters == sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in big.parameters())
    assert 1 <= len(gets) <= 3
    assert sent < 200_000 < len(raw) // 10
    assert report.checkpoint.files[0].bytes_read == sent


def test_buffers_sharing_one_storage(tmp_path):
    """Two integer buffers saved from one tensor form a counted-once storage tie whose first member is a buffer: no
    crash (a KeyError before the 2026-11-27 review), no untied parameters from it, and the preflight's memory at the
    stored dtypes and at fp32 agree for an all-F32 model."""
    ids = torch.arange(8).unsqueeze(0)
    torch.save({"wte.weight": torch.zeros(10, 4), "a.position_ids": ids, "b.position_ids": ids}, tmp_path / "pytorch_model.bin")
    report = audit(str(tmp_path / "pytorch_model.bin"), dtype="fp32")
    assert report.counts.parameters == report.counts.untied_parameters == 40
    assert [g.names for g in report.ties] == [("a.position_ids", "b.position_ids")]
    assert report.preflight.memory_stored == report.preflight.memory_at_dtype == 40 * 4 + 2 * 8 * 8


# -- whole modules: torch.save(model), not its state dict -------------------------------------------------------------


class WithSkips(torch.nn.Module):
    """What state_dict() leaves out: a None bias, a non-persistent buffer; and a submodule listed twice."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3, bias=False)
        self.register_parameter("absent", None)
        self.register_buffer("kept", torch.ones(2))
        self.register_buffer("dropped", torch.ones(5), persistent=False)
        self.again = self.lin  # one submodule under two names: state_dict lists both, sharing storage


# not mixed-views in the legacy format: torch writes float8/uint16 storages untyped there (see above)
WHOLE = [(name, legacy) for name in [*MODELS, "with-skips"] for legacy in (False, True) if not (legacy and name == "mixed-views")]


@pytest.mark.parametrize("name, legacy", WHOLE, ids=[f"{n}-{'legacy' if legacy else 'zip'}" for n, legacy in WHOLE])
def test_a_whole_pickled_module_is_read_as_its_state_dict(tmp_path, name, legacy):
    """torch.save(model) pickles the module object itself. Nothing of it is run: its tensors are read from the
    __dict__ the pickle carries, under state_dict()'s names, shapes and dtypes, ties included."""
    torch.manual_seed(0)
    model = WithSkips() if name == "with-skips" else MODELS[name]()
    path = tmp_path / "model.pt"
    torch.save(model, path, _use_new_zipfile_serialization=not legacy)
    sd = model.state_dict(keep_vars=True)
    ck, shapes, groups = ours(path)
    assert [t.name for t in ck.tensors] == list(sd)  # state_dict's order too
    assert shapes == {k: (tuple(v.shape), DTYPES[v.dtype]) for k, v in sd.items()}
    by_ptr: dict[int, set[str]] = {}
    for k, v in sd.items():
        by_ptr.setdefault(v.untyped_storage().data_ptr(), set()).add(k)
    assert groups == {frozenset(g) for g in by_ptr.values() if len(g) > 1}
    kinds = {f.kind for f in ck.findings}
    assert "unsafe-pickle" in kinds  # torch.load(weights_only=True) refuses it, and ckptcount says so
    assert "repeated-object" not in kinds  # with-skips: `again` is listed under both names, as state_dict() does
    if name in ("gpt2-tied", "t5", "bert-mlm", "llama-untied"):
        assert audit(str(path)).counts.parameters == sum(p.numel() for p in model.parameters())


def test_a_module_that_holds_itself_is_walked_once(tmp_path):
    model = torch.nn.Linear(2, 2)
    model.add_module("loop", model)  # _modules["loop"] is the module itself: a cycle in the pickle
    torch.save(model, tmp_path / "loop.pt")
    ck = load(str(tmp_path / "loop.pt"))
    assert [t.name for t in ck.tensors] == ["weight", "bias"]
    assert any(f.kind == "repeated-object" and "'loop'" in f.message for f in ck.findings)


def test_modules_shared_on_every_level_are_relisted_up_to_a_limit(tmp_path, monkeypatch):
    """A DAG of modules, each holding the next under two names: state_dict() would list 2**40 names. The walker lists
    modules again under each name until MAX_RELISTED members, then reports the rest once, quickly."""
    from ckptcount.formats.pytorch import walker as torch_zip

    chain = [torch.nn.Linear(1, 1, bias=False)]
    for _ in range(40):
        m = torch.nn.Module()
        m.add_module("a", chain[-1])
        m.add_module("b", chain[-1])
        chain.append(m)
    torch.save(chain[-1], tmp_path / "dag.pt")
    monkeypatch.setattr(torch_zip, "MAX_RELISTED", 1000)
    ck = load(str(tmp_path / "dag.pt"))
    assert 100 < len(ck.tensors) <= 1001 and len({t.storage for t in ck.tensors}) == 1
    assert ck.tensors[0].name == "a." * 40 + "weight"
    assert any(f.kind == "repeated-object" for f in ck.findings)
    small = torch.nn.Module()  # the same shape three levels deep: every one of the 2**3 names, as state_dict() gives
    small.add_module("a", chain[3])
    small.add_module("b", chain[3])
    torch.save(small, tmp_path / "small.pt")
    assert [t.name for t in load(str(tmp_path / "small.pt")).tensors] == list(small.state_dict())
